"""The deploy gate: a model goes live only when the evidence says it is at least as good.

`gate_model` is a pure decision on reports; `evaluate_and_gate` is the workflow that loads a
registered model, evaluates it, writes the report and decision next to each other and moves
the registry's deploy pointer only on approval. A model that cannot be loaded is rejected,
never deployed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from evaluation.config import EvaluationConfig, GateConfig
from evaluation.evaluate import evaluate_policy
from evaluation.report import CpeReport, save_report
from features import NormalizationSpec
from trainer import CorruptModelError, ModelRegistry, OnnxPolicy, RegistryError

GATE_FILE = "gate.json"


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
    deployed: bool = False
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def gate_model(report: CpeReport, previous: CpeReport | None, config: GateConfig) -> GateDecision:
    """Approve only if the normalized DR lower bound ≥ threshold, ESS ≥ minimum, all values are
    finite, the report is reliable and (when `max_swing` is set) the DR value moved at most
    `max_swing` relative to the previous model's report."""
    dr = report.headline_estimate
    reasons: list[str] = []
    checked: dict[str, float | None] = {
        "dr_value": dr.value,
        "dr_normalized": dr.normalized,
        "dr_normalized_ci_low": dr.normalized_ci_low,
        "effective_sample_size": dr.effective_sample_size,
        "logged_value": report.logged_value,
    }
    values = (dr.value, dr.normalized, dr.ci_low, dr.ci_high, dr.normalized_ci_low, dr.normalized_ci_high)
    if not _finite(*values, dr.effective_sample_size, report.logged_value):
        reasons.append(
            f"the DR estimate has non-finite values (value {dr.value}, interval {dr.ci_low}..{dr.ci_high})"
        )
    elif dr.normalized_ci_low < config.threshold:
        reasons.append(
            f"normalized DR lower bound {dr.normalized_ci_low:.4f} is below the threshold {config.threshold:.4f} "
            f"(estimate {dr.normalized:.4f}×, {int(round(dr.confidence * 100))}% interval)"
        )
    ess = dr.effective_sample_size
    if ess is not None and math.isfinite(ess) and ess < config.min_effective_sample_size:
        reasons.append(
            f"effective sample size {ess:.1f} is below the minimum {config.min_effective_sample_size:.1f}: "
            "the new policy is too far from the logged one for the data to judge it"
        )
    if not report.reliable:
        reasons.append(f"the report is marked unreliable: {'; '.join(report.warnings)}")
    if config.max_swing is not None and previous is not None:
        before = previous.headline_estimate.value
        swing = abs(dr.value - before) / abs(before) if before != 0 else (0.0 if dr.value == 0 else math.inf)
        checked["previous_dr_value"] = before
        checked["swing"] = swing
        if not (swing <= config.max_swing):
            reasons.append(
                f"DR value moved from {before:.4g} (model {previous.model_version}) to {dr.value:.4g}, a relative "
                f"change of {swing:.3f} > max_swing {config.max_swing:.3f}; check the data before trusting it"
            )
    return GateDecision(
        model_version=report.model_version,
        approved=not reasons,
        reasons=reasons,
        checked=checked,
        config=config,
    )


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
) -> tuple[CpeReport | None, GateDecision]:
    """Evaluate a registered version, gate it, write `reports_dir/<version>/{cpe_report,gate}.json`,
    and deploy it only when approved. A model that fails to load yields no report and a rejection."""
    out_dir = Path(reports_dir) / version
    try:
        policy = OnnxPolicy.load(registry, version)
    except (CorruptModelError, RegistryError) as exc:
        decision = GateDecision(
            model_version=version,
            approved=False,
            reasons=[f"model {version} could not be loaded from the registry: {exc}"],
            config=config.gate,
        )
        _save_decision(decision, out_dir)
        return None, decision
    report = evaluate_policy(timelines, policy, config, spec)
    save_report(report, out_dir)
    decision = gate_model(report, previous_report, config.gate)
    if decision.approved:
        dr = report.headline_estimate
        registry.deploy(
            version,
            reason=f"CPE gate approved: DR {dr.normalized:.3f}× logged (lower bound {dr.normalized_ci_low:.3f}×)",
        )
        decision = decision.model_copy(update={"deployed": True})
    _save_decision(decision, out_dir)
    return report, decision
