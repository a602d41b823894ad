"""The nightly refresh: normalization spec → train → export/register → CPE → gate → deploy.

It is an ordinary function over timelines so the demo, the CLI and the scheduler
(`infra.scheduler`) all run the same steps; each step's output lands in the run folder. An app's
candidate grid trains every candidate, evaluates each on the same held-out rows with
Bonferroni-corrected intervals and deploys at most the best approved one (`run_refresh`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from contracts import ActionKind, StreamrlError
from evaluation import (
    CanaryVerdict,
    CpeReport,
    GateDecision,
    ReportError,
    evaluate_and_gate,
    hold_out_mdps,
    judge_canary,
    load_report,
)
from evaluation.gate import GATE_FILE
from features import (
    NormalizationSpec,
    SpecDiff,
    fit_normalization,
    frame_from_feature_maps,
    latest_spec,
    publish_spec,
)
from infra.environment import Environment
from stream import load_timelines
from trainer import ModelRegistry
from trainer.algorithms import ALGORITHM_KINDS, AlgorithmConfig
from trainer.artifact import ModelMetadata
from trainer.policy import ExplorationConfig
from trainer.workflow import train_and_register

RefreshProgress = Callable[[str], None]
_STEPS = 3
_log = logging.getLogger(__name__)


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


def bonferroni_confidence(confidence: float, candidates: int) -> float:
    """The confidence each of `candidates` intervals needs so the one chosen among them holds at `confidence`.

    Picking the best of K candidates by its lower bound favours the one whose interval came out
    too optimistic (the winner's curse again, across candidates). Evaluating each at
    1 − (1 − c)/K makes all K intervals hold together with probability at least c (Bonferroni's
    union bound), so the chosen one's does too, whichever it is. K = 1 leaves c unchanged.
    """
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    return 1.0 - (1.0 - confidence) / candidates


@dataclass(frozen=True)
class CandidateResult:
    """One trained candidate of a refresh: its algorithm config, registered model, CPE report, gate decision."""

    config: AlgorithmConfig
    model: ModelMetadata
    report: CpeReport | None
    decision: GateDecision

    @property
    def lower_bound(self) -> float | None:
        """The headline's normalized lower bound, what candidates are ranked by (None: no finite one)."""
        if self.report is None:
            return None
        low = self.report.headline_estimate.normalized_ci_low
        return low if low is not None and math.isfinite(low) else None


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did. `candidate`, `report` and `decision` are the chosen candidate's: the one
    deployed, else (none approved) the one ranked best; `candidates` holds every candidate trained."""

    spec: NormalizationSpec
    spec_path: Path
    spec_diff: SpecDiff | None
    candidate: ModelMetadata
    report: CpeReport | None
    decision: GateDecision
    tensorboard_dir: Path
    feature_report: Path | None = None
    candidates: tuple[CandidateResult, ...] = ()
    confidence: float | None = None  # each candidate's interval confidence (Bonferroni-corrected for a grid)
    selection: str = ""  # why the chosen candidate was (or none was) deployed
    canary_verdict: CanaryVerdict | None = None  # the running canary's judgement, made before training

    @property
    def deployed(self) -> str | None:
        """The version this refresh deployed, or None (the previous model keeps serving)."""
        return self.candidate.version if self.decision.deployed else None


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
    configs: Sequence[AlgorithmConfig] | None = None,
) -> RefreshResult:
    """Fit the spec on `training_rows`, train each candidate, gate them on `evaluation_rows`, deploy
    at most one.

    The candidates are `configs` (an app's `AppManifest.candidate_configs()`), or the single
    `env.config.trainer`; they must learn one action kind. `actions` are what that kind needs (see
    `refresh_actions`); None derives them from `training_rows`. `exploration` is registered with
    each model: how discrete and parametric models explore around their scores (continuous
    policies sample from their own Gaussian).

    `evaluation_rows` should be what the currently deployed policy logged: CPE compares each
    candidate with exactly that logging policy, on the same held-out MDPs. One candidate is
    deployed when the gate approves it. K > 1 candidates are each evaluated at confidence
    1 − (1 − c)/K (`bonferroni_confidence`, c = `evaluation.confidence`), so the interval of the
    one chosen still holds at c; the approved candidate with the highest normalized headline lower
    bound is deployed, the others only registered. Every candidate's gate.json notes the
    correction, the chosen one's also why it was chosen.

    A running canary (`GateConfig.canary`) is judged first, on the realized returns in
    `training_rows` (`evaluation.judge_canary`): promoted, stopped or left running. A chosen
    candidate the data cannot judge (`GateDecision.undecided`) then becomes the canary, replacing
    one left running, when the environment's gate has `canary`.

    `progress` gets one line as each step starts ("refresh <label> 2/3: training ...", once per
    candidate for steps 2 and 3) and one when all are done.
    """
    started = time.monotonic()

    def step(number: int, what: str) -> None:
        progress(f"refresh {label} {number}/{_STEPS}: {what}")

    configs = list(configs) if configs else [env.config.trainer]
    kinds = sorted({ALGORITHM_KINDS[c.type].value for c in configs})
    if len(kinds) > 1:
        raise RefreshError(
            f"the candidates learn different action kinds {kinds}; a grid varies the knobs of one trainer type"
        )
    actions = refresh_actions(configs[0].type, training_rows, actions)  # refuses a kind mismatch
    registry = ModelRegistry(env.registry_dir)
    canary_config = env.config.evaluation.gate.canary
    verdict = judge_canary(registry, training_rows, canary_config, env.reports_dir)
    if verdict is not None:
        progress(f"refresh {label}: canary {verdict.canary} — {verdict.outcome}: {verdict.reason}")
    # Hold a share of the evaluation MDPs out of training, so CPE never scores a candidate on
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
    count = len(configs)
    evaluation = env.config.evaluation
    confidence = bonferroni_confidence(evaluation.confidence, count)
    if count > 1:
        evaluation = evaluation.model_copy(update={"confidence": confidence})

    trained: list[tuple[AlgorithmConfig, ModelMetadata, Path]] = []
    for index, config in enumerate(configs, start=1):
        which = f"candidate {index}/{count} " if count > 1 else ""
        log_dir = env.tensorboard_dir / label
        if count > 1:
            log_dir = log_dir / f"candidate{index}"
        step(2, f"training {which}{config.type} on {len(training_rows)} rows, then export and register")
        model = train_and_register(training_rows, spec, actions, config, registry, log_dir, exploration)
        trained.append((config, model, log_dir))
    results: list[CandidateResult] = []
    for config, model, log_dir in trained:
        how = (
            "gate, deploy if approved"
            if count == 1
            else f"at confidence {confidence:.4g} (Bonferroni over {count} candidates), gate"
        )
        step(3, f"evaluating {model.version} on {len(evaluation_rows)} logged rows, {how}")
        report, decision = evaluate_and_gate(
            evaluation_rows,
            registry,
            model.version,
            evaluation,
            spec,
            env.reports_dir,
            previous_report=previous_report,
            tensorboard_dir=log_dir,
            deploy=count == 1,  # a grid deploys only the one it chooses, below
        )
        results.append(CandidateResult(config, model, report, decision))
    chosen_index, selection = 0, ""
    if count > 1:
        results, chosen_index, selection = _deploy_best(
            results, registry, env.reports_dir, env.config.evaluation.confidence
        )
    if canary_config is not None and results[chosen_index].decision.undecided:
        results[chosen_index] = _start_canary(
            results[chosen_index], registry, env.reports_dir, canary_config.share
        )
    chosen = results[chosen_index]
    outcome = "deployed" if chosen.decision.deployed else "not deployed"
    if chosen.decision.canary:
        outcome = f"serving {canary_config.share:.0%} of episodes as a canary"
    if count > 1 and not chosen.decision.deployed:
        outcome = f"none of {count} candidates deployed"
    progress(f"refresh {label} done in {time.monotonic() - started:.0f}s: {chosen.model.version} {outcome}")
    return RefreshResult(
        spec=spec,
        spec_path=published.path,
        spec_diff=published.diff,
        candidate=chosen.model,
        report=chosen.report,
        decision=chosen.decision,
        tensorboard_dir=trained[chosen_index][2],
        feature_report=published.report_path,
        candidates=tuple(results),
        confidence=confidence,
        selection=selection,
        canary_verdict=verdict,
    )


def _start_canary(
    result: CandidateResult, registry: ModelRegistry, reports_dir: Path, share: float
) -> CandidateResult:
    """Serve an undecided candidate to `share` of episodes; its gate.json says so."""
    why = "; ".join(result.decision.reasons)
    registry.start_canary(
        result.model.version, share, reason=f"the logged data cannot judge it ({why}); realized returns will"
    )
    note = (
        f"canary: serves {share:.0%} of episodes beside the deployed model until their realized returns "
        "decide (evaluation.canary)"
    )
    decision = result.decision.model_copy(
        update={
            "canary": True,
            "notes": [*result.decision.notes, note],
            "summary": f"{result.decision.summary}; {note}",
        }
    )
    _rewrite_decision(decision, reports_dir)
    return replace(result, decision=decision)


def _deploy_best(
    results: list[CandidateResult], registry: ModelRegistry, reports_dir: Path, confidence: float
) -> tuple[list[CandidateResult], int, str]:
    """Deploy the approved candidate with the highest lower bound; note the choice in every gate.json.

    `confidence` is the configured one, before the correction. Returns the candidates with their
    updated decisions, the index of the chosen one (the best ranked when none was approved) and why.
    """
    count = len(results)
    each = bonferroni_confidence(confidence, count)
    correction = (
        f"interval at confidence {each:.4g}, not {confidence:g}: Bonferroni correction for choosing among "
        f"{count} candidates (1 − (1 − {confidence:g})/{count}), so the chosen one's holds at {confidence:g}"
    )

    def rank(result: CandidateResult) -> tuple[bool, float]:
        low = result.lower_bound
        return (result.decision.approved and low is not None, low if low is not None else -math.inf)

    best_index = max(range(count), key=lambda i: rank(results[i]))  # ties: the earlier grid entry
    best = results[best_index]
    approved = [r for r in results if r.decision.approved and r.lower_bound is not None]
    chosen_why = f"none of the {count} candidates was approved, none deployed"
    if approved:
        head = best.report.headline_estimate
        chosen_why = (
            f"{best.model.version} deployed: the highest {best.report.headline} lower bound "
            f"({head.normalized_ci_low:.3f}× logged) of the {len(approved)} approved among {count} candidates"
        )
        registry.deploy(
            best.model.version,
            reason=f"CPE gate approved, best of {count} candidates: {best.report.headline} "
            f"{head.normalized:.3f}× logged (lower bound {head.normalized_ci_low:.3f}× at confidence {each:.4g}, Bonferroni)",
        )
    updated = []
    for result in results:
        notes = [correction]
        if result is best and approved:
            notes.append(chosen_why)
        elif result.decision.approved:
            notes.append(
                f"approved, not deployed: {best.model.version} had the highest lower bound "
                f"({best.lower_bound:.3f}× vs {result.lower_bound:.3f}×; ties go to the earlier candidate)"
            )
        decision = result.decision.model_copy(
            update={"notes": [*result.decision.notes, *notes], "deployed": result is best and bool(approved)}
        )
        _rewrite_decision(decision, Path(reports_dir))
        updated.append(replace(result, decision=decision))
    selection = f"{chosen_why}; {correction}"
    return updated, best_index, selection


def _rewrite_decision(decision: GateDecision, reports_dir: Path) -> None:
    """Replace `reports_dir/<version>/gate.json` (written by `evaluate_and_gate`) atomically."""
    path = reports_dir / decision.model_version / GATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(decision.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)


# --- what a refresh of an environment trains and evaluates on --------------------------------
@dataclass(frozen=True)
class RefreshInputs:
    """What a refresh of one environment trains and evaluates on, read from its timelines and registry."""

    training_rows: pd.DataFrame
    evaluation_rows: pd.DataFrame
    logging_policy: str  # whose decisions `evaluation_rows` are, for messages
    deployed: str | None
    previous_report: CpeReport | None  # the deployed model's CPE report: the gate's swing check
    previous_spec: NormalizationSpec | None
    exploration: ExplorationConfig
    configs: list[AlgorithmConfig]


def refresh_inputs(
    env: Environment, now: datetime, *, train_days: float, eval_days: float | None = None
) -> RefreshInputs:
    """Timelines of the last `train_days` to train on; to evaluate on, the rows among them (or among
    the last `eval_days`) logged by the deployed model — pooled across days, since CPE compares a
    candidate with the policy that logged the rows — or, with nothing deployed, by the day-0
    policy (`logging_policy_rows`). With an app, its exploration and candidate grid; without, the
    environment file's `demo.learned_exploration` and `trainer`.
    """
    train_start = now - timedelta(days=train_days)
    eval_start = train_start if eval_days is None else now - timedelta(days=eval_days)
    rows = load_timelines(env.stream_config().output_dir, start=min(train_start, eval_start))
    training, recent = rows, rows
    if len(rows):
        training = rows[rows["timestamp"] >= train_start].reset_index(drop=True)
        recent = rows[rows["timestamp"] >= eval_start].reset_index(drop=True)
    registry = ModelRegistry(env.registry_dir)
    evaluation, logging_policy = logging_policy_rows(recent, registry)
    deployed = registry.deployed()
    manifest = env.manifest
    return RefreshInputs(
        training_rows=training,
        evaluation_rows=evaluation,
        logging_policy=logging_policy,
        deployed=deployed,
        previous_report=deployed_report(env, deployed),
        previous_spec=latest_spec(env.specs_dir),
        exploration=manifest.exploration if manifest is not None else env.config.demo.learned_exploration,
        configs=manifest.candidate_configs() if manifest is not None else [env.config.trainer],
    )


def logging_policy_rows(rows: pd.DataFrame, registry: ModelRegistry) -> tuple[pd.DataFrame, str]:
    """The rows logged by the deployed version, and its name. With none deployed, the rows of the
    day-0 policy — every version that is not a registered model: serving's fallback (`day0-uniform`)
    or the app's own rule logged through `POST /v1/decisions` — and their names."""
    deployed = registry.deployed()
    if deployed is not None:
        return rows[rows["model_version"] == deployed].reset_index(drop=True), deployed
    day0 = rows[~rows["model_version"].isin(set(registry.list_versions()))].reset_index(drop=True)
    names = sorted({str(v) for v in day0["model_version"]})
    return day0, ", ".join(names) if names else "the day-0 policy"


def deployed_report(env: Environment, deployed: str | None) -> CpeReport | None:
    """The CPE report of the deployed version (`reports/<version>/cpe_report.json`), or None when
    nothing is deployed or it was deployed without one (by hand: then no swing check)."""
    if deployed is None:
        return None
    try:
        return load_report(env.reports_dir / deployed)
    except ReportError as exc:
        _log.warning("no previous CPE report for the swing check: %s", exc)
        return None
