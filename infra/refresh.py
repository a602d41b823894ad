"""The nightly refresh: normalization spec → train → export/register → CPE → gate → deploy.

It is an ordinary function over timelines so the demo, the CLI and a scheduler on a real
cluster all run the same steps; each step's output lands in the run folder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evaluation import CpeReport, GateDecision, evaluate_and_gate, hold_out_mdps
from features import (
    NormalizationSpec,
    SpecDiff,
    fit_normalization,
    frame_from_feature_maps,
    publish_spec,
)
from infra.environment import Environment
from trainer import ModelRegistry
from trainer.artifact import ModelMetadata
from trainer.policy import ExplorationConfig
from trainer.workflow import train_and_register

RefreshProgress = Callable[[str], None]
_STEPS = 3


def print_to_terminal(line: str) -> None:
    """The default refresh progress: each line on stderr, but only when stderr is a terminal."""
    if sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RefreshResult:
    spec: NormalizationSpec
    spec_path: Path
    spec_diff: SpecDiff | None
    candidate: ModelMetadata
    report: CpeReport | None
    decision: GateDecision
    tensorboard_dir: Path
    feature_report: Path | None = None


def run_refresh(
    env: Environment,
    training_rows: pd.DataFrame,
    evaluation_rows: pd.DataFrame,
    actions: Sequence[str],
    exploration: ExplorationConfig,
    *,
    label: str,
    previous_spec: NormalizationSpec | None = None,
    previous_report: CpeReport | None = None,
    progress: RefreshProgress = print_to_terminal,
) -> RefreshResult:
    """Fit the spec on `training_rows`, train a candidate, and gate it on `evaluation_rows`.

    `evaluation_rows` should be what the currently deployed policy logged since the last
    refresh: CPE compares the candidate with exactly that logging policy. `progress` gets one
    line as each step starts ("refresh <label> 2/3: training ...") and one when all are done.
    """
    started = time.monotonic()

    def step(number: int, what: str) -> None:
        progress(f"refresh {label} {number}/{_STEPS}: {what}")

    # Hold a share of the evaluation MDPs out of training, so CPE never scores the candidate on
    # the decisions it was fitted to (winner's curse); `evaluation.holdout_fraction`, 0 disables.
    training_rows, evaluation_rows = hold_out_mdps(
        training_rows, evaluation_rows, env.config.evaluation.holdout_fraction, env.config.evaluation.seed
    )
    step(1, f"fitting the normalization spec on {len(training_rows)} training rows")
    frame = frame_from_feature_maps(training_rows["state_features"].tolist())
    spec = fit_normalization(frame, env.config.normalization)
    # Diff against the previous spec, write the feature report, refuse blocked changes (raises).
    published = publish_spec(
        spec, env.specs_dir, env.config.normalization, previous=previous_spec, frame=frame
    )
    spec_diff, spec_path = published.diff, published.path
    registry = ModelRegistry(env.registry_dir)
    log_dir = env.tensorboard_dir / label
    step(2, f"training {env.config.trainer.type} on {len(training_rows)} rows, then export and register")
    candidate = train_and_register(
        training_rows, spec, list(actions), env.config.trainer, registry, log_dir, exploration
    )
    step(3, f"evaluating {candidate.version} on {len(evaluation_rows)} logged rows, gate, deploy if approved")
    report, decision = evaluate_and_gate(
        evaluation_rows,
        registry,
        candidate.version,
        env.config.evaluation,
        spec,
        env.reports_dir,
        previous_report=previous_report,
        tensorboard_dir=log_dir,
    )
    outcome = "deployed" if decision.deployed else "not deployed"
    progress(f"refresh {label} done in {time.monotonic() - started:.0f}s: {candidate.version} {outcome}")
    return RefreshResult(
        spec=spec,
        spec_path=spec_path,
        spec_diff=spec_diff,
        candidate=candidate,
        report=report,
        decision=decision,
        tensorboard_dir=log_dir,
        feature_report=published.report_path,
    )
