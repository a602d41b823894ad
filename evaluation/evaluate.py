"""Timelines + a served model → CpeReport: the model scored exactly as serving would run it.

The model's kind (`metadata.action_kind`) picks its adapter from the table in
`evaluation.kinds`; each adapter scores the timelines with the functions serving samples from
(`probabilities` for discrete and parametric models, draws of `act` for continuous ones), so
the estimate is of the model *as served*. The headline is the one-step doubly robust mean
reward per decision (`dr`; `kernel_dr` for continuous actions).

Array-level entry points evaluate any target policy without a model (simulators, benchmarks):
`evaluate_probabilities` (discrete), `evaluate_candidate_probabilities` (parametric) and
`evaluate_action_samples` (continuous).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from contracts import ActionKind
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.kinds import served_policy_evaluation
from evaluation.kinds.continuous import evaluate_action_samples
from evaluation.kinds.discrete import evaluate_probabilities
from evaluation.kinds.parametric import evaluate_candidate_probabilities
from evaluation.report import CpeReport
from features import NormalizationSpec

__all__ = [
    "evaluate_action_samples",
    "evaluate_candidate_probabilities",
    "evaluate_policy",
    "evaluate_probabilities",
]


def evaluate_policy(
    timelines: pd.DataFrame, policy: Any, config: EvaluationConfig, spec: NormalizationSpec
) -> CpeReport:
    """Estimate the mean reward per decision of `policy` as served, on logged `timelines`.

    `policy` is what `trainer.onnx_policy.load_policy` returns for any kind; its
    `metadata.action_kind` selects the adapter. `spec` normalizes state features for the reward
    model (the policy normalizes inside its graph). Raises `EvaluationError` for data that cannot
    be evaluated (naming the column and the kind); data that is merely too small yields a report
    with `reliable=False`, which the gate rejects. The report's `data_health` holds the
    logged-data checks of `timelines` against `config.health` (`evaluation.health`).
    """
    metadata = getattr(policy, "metadata", None)
    kind = getattr(metadata, "action_kind", None)
    if kind is None:
        raise EvaluationError(
            f"policy {policy!r} has no metadata.action_kind; load it with trainer.onnx_policy.load_policy"
        )
    return served_policy_evaluation(ActionKind(kind))(timelines, policy, config, spec)
