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

from contracts import ActionKind, StreamrlError
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
from trainer.algorithms import ALGORITHM_KINDS
from trainer.artifact import ModelMetadata
from trainer.policy import ExplorationConfig
from trainer.workflow import train_and_register

RefreshProgress = Callable[[str], None]
_STEPS = 3


def print_to_terminal(line: str) -> None:
    """The default refresh progress: each line on stderr, but only when stderr is a terminal."""
    if sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


class RefreshError(StreamrlError):
    """The timelines or the arguments do not fit the configured algorithm's action kind."""


def _action_names(timelines: pd.DataFrame) -> list[str]:
    """Discrete: every action name any row could choose, sorted (the model's action order)."""
    return sorted({str(a) for possible in timelines["possible_actions"] for a in possible})


def _action_dimensions(timelines: pd.DataFrame) -> list[str]:
    """Continuous: the action dimensions in vector order, which every row's `possible_actions` names."""
    orders = {tuple(possible) for possible in timelines["possible_actions"]}
    if len(orders) != 1:
        raise RefreshError(
            f"continuous timelines must name the same action dimensions on every row, found "
            f"{sorted(orders)[:5]}; pass them with --actions, in action_vector order"
        )
    return list(orders.pop())


def _no_fixed_actions(timelines: pd.DataFrame) -> list[str]:
    """Parametric: no fixed action set; each row carries its candidates' features."""
    return []


@dataclass(frozen=True)
class _KindActions:
    """What `actions` means for one action kind."""

    names: str  # what the actions name, for messages
    from_timelines: Callable[[pd.DataFrame], list[str]]
    may_be_given: bool = True


_KIND_ACTIONS: dict[ActionKind, _KindActions] = {
    ActionKind.DISCRETE: _KindActions("action names, in model order", _action_names),
    ActionKind.CONTINUOUS: _KindActions("action dimensions, in action_vector order", _action_dimensions),
    ActionKind.PARAMETRIC: _KindActions(
        "nothing: candidates come from possible_action_features", _no_fixed_actions, may_be_given=False
    ),
}


def refresh_actions(
    algorithm_type: str, timelines: pd.DataFrame, given: Sequence[str] | None = None
) -> list[str]:
    """The `actions` the refresh trains `algorithm_type` with: `given`, else derived from `timelines`
    (discrete: action names; continuous: action dimensions; parametric: none, see `_KIND_ACTIONS`).

    Raises `RefreshError` when the timelines hold decisions of another action kind, or when
    actions are given for a kind that takes none.
    """
    kind = ALGORITHM_KINDS[algorithm_type]
    if "action_kind" in timelines.columns:
        logged = sorted({str(k) for k in timelines["action_kind"].dropna()} - {kind.value})
        if logged:
            raise RefreshError(
                f"trainer type {algorithm_type!r} learns {kind.value} actions, but the timelines hold "
                f"{' and '.join(logged)} decisions; set `trainer.type` in the environment file to an "
                f"algorithm of that kind (see examples/)"
            )
    meaning = _KIND_ACTIONS[kind]
    if given is None:
        return meaning.from_timelines(timelines)
    if given and not meaning.may_be_given:
        raise RefreshError(
            f"trainer type {algorithm_type!r} ({kind.value} actions) takes {meaning.names}; "
            f"drop the actions {list(given)}"
        )
    return list(given)


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
    actions: Sequence[str] | None,
    exploration: ExplorationConfig,
    *,
    label: str,
    previous_spec: NormalizationSpec | None = None,
    previous_report: CpeReport | None = None,
    progress: RefreshProgress = print_to_terminal,
) -> RefreshResult:
    """Fit the spec on `training_rows`, train a candidate, and gate it on `evaluation_rows`.

    The candidate is `env.config.trainer`, any algorithm type. `actions` are what that type's kind
    needs (see `refresh_actions`); None derives them from `training_rows`. `exploration` is
    registered with the model: how discrete and parametric models explore around their scores
    (continuous policies sample from their own Gaussian).

    `evaluation_rows` should be what the currently deployed policy logged since the last
    refresh: CPE compares the candidate with exactly that logging policy. `progress` gets one
    line as each step starts ("refresh <label> 2/3: training ...") and one when all are done.
    """
    started = time.monotonic()

    def step(number: int, what: str) -> None:
        progress(f"refresh {label} {number}/{_STEPS}: {what}")

    actions = refresh_actions(env.config.trainer.type, training_rows, actions)  # refuses a kind mismatch
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
        training_rows, spec, actions, env.config.trainer, registry, log_dir, exploration
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
