"""CPE per action kind: one adapter per kind, found through one table keyed by `ActionKind`.

An adapter turns timelines and a served policy into what the estimators need
(`evaluation.scoring.ScoredDecisions`) and returns the report:

| kind | weights | reward model and FQE | module |
| --- | --- | --- | --- |
| discrete | π(a|x)/μ(a|x) over the model's actions | one ridge head per action | `discrete` |
| parametric | π(k|x)/μ(k|x) over each row's candidates | ridge on φ(state, candidate features) | `parametric` |
| continuous | K_h(π(x) − a)/μ(a|x), kernel-smoothed | ridge on φ(state, action vector) | `continuous` |

Modules are imported on first use. Adding a kind is one module here plus one line in the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from contracts import ActionKind
from evaluation.config import EvaluationConfig
from evaluation.report import CpeReport
from features import NormalizationSpec


class EvaluatedPolicy(Protocol):
    """What evaluation needs of a served policy of any kind (`trainer.onnx_policy.load_policy`);
    each kind's adapter adds how the policy picks or draws its actions."""

    @property
    def version(self) -> str: ...

    @property
    def metadata(self): ...  # noqa: ANN201 - trainer.ModelMetadata

    def features(self, maps: Sequence[Mapping[str, float | None]]) -> np.ndarray: ...


class ServedPolicyEvaluation(Protocol):
    """`evaluate_served(timelines, policy, config, spec)` of one kind's adapter module."""

    def __call__(
        self, timelines: pd.DataFrame, policy: Any, config: EvaluationConfig, spec: NormalizationSpec
    ) -> CpeReport: ...


ADAPTERS: dict[ActionKind, str] = {
    ActionKind.DISCRETE: "evaluation.kinds.discrete",
    ActionKind.PARAMETRIC: "evaluation.kinds.parametric",
    ActionKind.CONTINUOUS: "evaluation.kinds.continuous",
}


def served_policy_evaluation(kind: ActionKind) -> ServedPolicyEvaluation:
    """The adapter's `evaluate_served` for `kind`."""
    return importlib.import_module(ADAPTERS[ActionKind(kind)]).evaluate_served
