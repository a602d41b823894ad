"""The deploy gate: a model goes live only when the evidence says it is at least as good.

`gate_model` is a pure decision on reports; `evaluate_and_gate` is the workflow that loads a
registered model, evaluates it, writes the report and decision next to each other and moves
the registry's deploy pointer only on approval. A model that cannot be loaded is rejected,
never deployed.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from evaluation.config import EvaluationConfig, GateConfig
from evaluation.errors import EvaluationError
from evaluation.evaluate import evaluate_policy
from evaluation.health import DataHealth, check_data_health
from evaluation.html_report import save_html_report, write_tensorboard_scalars
from evaluation.report import CpeReport, save_report
from features import NormalizationSpec
from trainer import CorruptModelError, ModelRegistry, RegistryError, TrainerError
from trainer.onnx_policy import load_registered_policy

GATE_FILE = "gate.json"
ALERTS_FILE = "alerts.jsonl"

_log = logging.getLogger(__name__)

# A bound this close below the threshold is at it: float rounding of an estimate that equals the
# logged policy's value exactly (CartPole's reward is always 1: every bootstrap refit of DR gives
# 1 ± 1e-15, and a lower bound of 0.9999999999999998 must not reject "as good as now").
THRESHOLD_ROUNDING = 1e-9


class GateAlert(BaseModel):
    """An anomaly that holds a model back until a person looks: the estimate swung too far."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    kind: Literal["swing"] = "swing"
    model_version: str
    previous_model_version: str
    previous_value: float
    value: float
    swing: float
    max_swing: float
    message: str
    raised_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class GateDecision(BaseModel):
    """Whether a model version may be deployed, and every reason it may not."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    model_version: str
    approved: bool
    reasons: list[str]
    checked: dict[str, float | None] = Field(
        default_factory=dict, description="the values the decision was based on, by name"
    )
    config: GateConfig
    alerts: list[GateAlert] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list,
        description="reported but not blocking: estimators that cannot be computed for these data by design "
        "(e.g. PDIS whose cumulative weights exceed float64 over long episodes), each with why",
    )
    summary: str = Field("", description="the plain-language verdict with the outcome, for people")
    undecided: bool = Field(
        False,
        description="rejected only for lack of evidence: the data cannot judge the model (report unreliable, "
        "effective sample size too small), or its interval holds the threshold (lower bound below, upper bound "
        "at or above it): nothing says it is worse; with `GateConfig.canary` it becomes a canary",
    )
    deployed: bool = False
    canary: bool = Field(False, description="started as a canary (`GateConfig.canary`)")
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _health_reasons(health: DataHealth | None) -> list[str]:
    """One rejection reason per failed blocking data-health check, naming the check, the measured
    value and the threshold (e.g. "data health: feature 'age' missing on 63.0% of decisions (max 50%)")."""
    return [] if health is None else [f"data health: {check.detail}" for check in health.failures]


def gate_model(report: CpeReport, previous: CpeReport | None, config: GateConfig) -> GateDecision:
    """Approve only if the headline's normalized lower bound ≥ threshold, its ESS ≥ minimum, every
    computable estimate is finite, the report is reliable, the required high-confidence bound (if
    any) clears the threshold too, (when `max_swing` is set) the headline value moved at most
    `max_swing` relative to the previous model's report — a larger swing also raises an alert — and
    every blocking check of the report's logged-data health passed (`CpeReport.data_health`; none
    is judged on reports written before it was measured).

    The headline is the estimate the report chose for the problem (`CpeReport.headline`, with
    `headline_reason`): MAGIC (WDR where the data do not confirm FQE) for multi-step episodes, DR
    for one-step ones, unless the configuration names another; `kernel_` versions for continuous
    actions. A secondary estimate
    that cannot be computed for these data by design (`Estimate.available` False, e.g. PDIS over
    a horizon where its weights exceed float64) is listed in `notes` and does not block; one that
    is computable but NaN or infinite points at bad input and blocks."""
    head = report.headline_estimate
    name = report.headline
    reasons = _health_reasons(report.data_health)
    # Bounds below the threshold, and what says the data cannot judge at all: with the latter, the
    # former are no verdict either; nor are they when the interval reaches the threshold from below
    # (`GateDecision.undecided`): the data then neither show the candidate better nor worse.
    short_bounds: list[str] = []
    cannot_judge: list[str] = []
    alerts: list[GateAlert] = []
    checked: dict[str, float | None] = {
        "headline_value": head.value,
        "headline_normalized": head.normalized,
        "headline_normalized_ci_low": head.normalized_ci_low,
        "effective_sample_size": head.effective_sample_size,
        "pareto_k": head.pareto_k,
        "logged_value": report.logged_value,
    }
    if report.data_health is not None:
        checked.update({f"data_health/{c.name}": c.value for c in report.data_health.checks if c.blocking})
    values = (
        head.value,
        head.normalized,
        head.ci_low,
        head.ci_high,
        head.normalized_ci_low,
        head.normalized_ci_high,
    )
    if not head.available:
        reasons.append(f"the headline estimate {name} cannot be computed: {'; '.join(head.warnings)}")
    elif not _finite(*values, report.logged_value):
        reasons.append(
            f"the headline estimate {name} has non-finite values (value {head.value}, interval "
            f"{head.ci_low}..{head.ci_high})"
        )
    elif head.normalized_ci_low < config.threshold - THRESHOLD_ROUNDING:
        short_bounds.append(
            f"normalized {name} lower bound {head.normalized_ci_low:.4f} is below the threshold "
            f"{config.threshold:.4f} (estimate {head.normalized:.4f}×, {int(round(head.confidence * 100))}% interval)"
        )
    if config.require_bound is not None:
        bound = next((b for b in report.bounds if b.method == config.require_bound), None)
        if bound is None:
            short_bounds.append(
                f"the required {config.require_bound.value} bound is not in the report: the importance-weighted "
                "terms it bounds overflow float64 or are too few for these data"
            )
        else:
            checked[f"{bound.method.value}_normalized_lower"] = bound.normalized_lower
            if not (bound.normalized_lower >= config.threshold - THRESHOLD_ROUNDING):
                short_bounds.append(
                    f"the {bound.method.value} lower bound on {bound.estimator} is {bound.normalized_lower:.4f}× the "
                    f"logged policy, below the threshold {config.threshold:.4f}"
                )
    secondary = {name: e for name, e in report.estimates.items() if name != report.headline}
    broken = sorted(
        name for name, e in secondary.items() if e.available and not _finite(e.value, e.ci_low, e.ci_high)
    )
    if broken:
        why = "; ".join(w for name in broken for w in secondary[name].warnings if w.startswith(f"{name}:"))
        reasons.append(
            f"estimates {broken} are NaN or infinite although computable for these data: a corrupt input, "
            "or too few episodes that support the target policy — inspect the report's weight diagnostics"
            + (f" ({why})" if why else "")
        )
    notes = [
        f"{e.warnings[0]} (reported, does not block: the gate decides on {report.headline})"
        for _, e in sorted(secondary.items())
        if not e.available
    ]
    ess = head.effective_sample_size
    if ess is not None and math.isfinite(ess) and ess < config.min_effective_sample_size:
        cannot_judge.append(
            f"effective sample size {ess:.1f} is below the minimum {config.min_effective_sample_size:.1f}: "
            "the new policy is too far from the logged one for the data to judge it"
        )
    if not report.reliable:
        cannot_judge.append(f"the report is marked unreliable: {'; '.join(report.warnings)}")
    wrong = list(reasons)  # health, non-finite or uncomputable estimates so far; the swing below
    comparable = previous is not None and previous.headline == name
    before = previous.headline_estimate.value if previous is not None and comparable else None
    if (
        config.max_swing is not None
        and previous is not None
        and before is not None
        and head.value is not None
    ):
        swing = (
            abs(head.value - before) / abs(before) if before != 0 else (0.0 if head.value == 0 else math.inf)
        )
        checked["previous_headline_value"] = before
        checked["swing"] = swing
        if not (swing <= config.max_swing):
            message = (
                f"{name} value moved from {before:.4g} (model {previous.model_version}) to {head.value:.4g}, a relative "
                f"change of {swing:.3f} > max_swing {config.max_swing:.3f}; model held — check the data "
                "before trusting it"
            )
            wrong.append(message)
            alerts.append(
                GateAlert(
                    model_version=report.model_version,
                    previous_model_version=previous.model_version,
                    previous_value=before,
                    value=head.value,
                    swing=swing,
                    max_swing=config.max_swing,
                    message=message,
                )
            )
    reasons = [*reasons, *short_bounds, *cannot_judge, *wrong[len(reasons) :]]  # swings last
    outcome = "approved" if not reasons else f"rejected: {'; '.join(reasons)}"
    unavailable = sorted(name for name, e in secondary.items() if not e.available)
    if unavailable:
        outcome += f"; not computable for these data, not blocking: {unavailable}"
    return GateDecision(
        model_version=report.model_version,
        approved=not reasons,
        reasons=reasons,
        undecided=bool(cannot_judge or (short_bounds and _reaches(head.normalized_ci_high, config)))
        and not wrong
        and head.available,
        checked=checked,
        config=config,
        alerts=alerts,
        notes=notes,
        summary=f"{_short_verdict(report)}; {outcome}",
    )


def _reaches(upper: float | None, config: GateConfig) -> bool:
    """True when an interval's upper bound is at or above the threshold: not shown worse."""
    return upper is not None and math.isfinite(upper) and upper >= config.threshold - THRESHOLD_ROUNDING


def _short_verdict(report: CpeReport) -> str:
    e = report.headline_estimate
    pct = int(round(e.confidence * 100))
    if not e.available:
        return (
            f"the new policy ({report.model_version}) could not be estimated ({report.headline} unavailable)"
        )
    return (
        f"the new policy ({report.model_version}) is estimated at {e.normalized:.2f}× the logged policy "
        f"({pct} % CI {e.normalized_ci_low:.2f}–{e.normalized_ci_high:.2f})"
    )


def record_alerts(decision: GateDecision, reports_dir: Path | str) -> Path | None:
    """Append the decision's alerts to `reports_dir/alerts.jsonl` and log each as a warning."""
    if not decision.alerts:
        return None
    path = Path(reports_dir) / ALERTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for alert in decision.alerts:
            out.write(alert.model_dump_json() + "\n")
            _log.warning("CPE gate alert for model %s: %s", alert.model_version, alert.message)
    return path


def _save_decision(decision: GateDecision, directory: Path) -> Path:
    path = directory / GATE_FILE
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(decision.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def evaluate_and_gate(
    timelines: pd.DataFrame,
    registry: ModelRegistry,
    version: str,
    config: EvaluationConfig,
    spec: NormalizationSpec,
    reports_dir: Path | str,
    previous_report: CpeReport | None = None,
    tensorboard_dir: Path | str | None = None,
    *,
    deploy: bool = True,
) -> tuple[CpeReport | None, GateDecision]:
    """Evaluate a registered version of any action kind (loaded as served by
    `trainer.onnx_policy.load_registered_policy`), gate it, write `reports_dir/<version>/{cpe_report.json,
    gate.json,report.html}` (+ TensorBoard scalars under `tensorboard_dir`), append alerts to
    `reports_dir/alerts.jsonl`, and deploy it only when approved. A model that fails to load or
    cannot be evaluated yields no report and a rejection. Timelines that break `config.health` (the
    report's `data_health`) reject the model whatever its estimate, so serving keeps the deployed
    one; when they cannot even be evaluated (e.g. a propensity of 0), the failed health checks are
    added to the rejection's reasons.

    Pass timelines the candidate was NOT trained on (see `hold_out_mdps`), or the estimate
    carries the winner's curse of being scored on its own training data."""
    out_dir = Path(reports_dir) / version
    try:
        policy = load_registered_policy(registry, version)
    except (CorruptModelError, RegistryError, TrainerError, ValueError) as exc:
        decision = GateDecision(
            model_version=version,
            approved=False,
            reasons=[f"model {version} could not be loaded from the registry: {exc}"],
            config=config.gate,
        )
        _save_decision(decision, out_dir)
        return None, decision
    try:
        report = evaluate_policy(timelines, policy, config, spec)
    except EvaluationError as exc:
        _log.error("model %s could not be evaluated: %s", version, exc)
        # The data-health checks still say what in the logs is broken, by the configured thresholds.
        kind = getattr(getattr(policy, "metadata", None), "action_kind", None)
        health = (
            None
            if kind is None
            else check_data_health(timelines, config.health, kind, feature_names=spec.feature_names)
        )
        decision = GateDecision(
            model_version=version,
            approved=False,
            reasons=[f"model {version} could not be evaluated: {exc}", *_health_reasons(health)],
            config=config.gate,
        )
        _save_decision(decision, out_dir)
        return None, decision
    save_report(report, out_dir)
    decision = gate_model(report, previous_report, config.gate)
    record_alerts(decision, reports_dir)
    if decision.approved and deploy:  # deploy=False: the caller chooses among approved candidates
        head = report.headline_estimate
        registry.deploy(
            version,
            reason=f"CPE gate approved: {report.headline} {head.normalized:.3f}× logged "
            f"(lower bound {head.normalized_ci_low:.3f}×)",
        )
        decision = decision.model_copy(update={"deployed": True})
    _save_decision(decision, out_dir)
    save_html_report(report, out_dir, decision.summary, decision.reasons, decision.notes)
    if tensorboard_dir is not None:
        write_tensorboard_scalars(report, tensorboard_dir)
    return report, decision
