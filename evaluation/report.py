"""The CPE report: what was estimated, how sure we are, and what it means in one sentence.

Horizon's users could not read bare numbers like 12 163 (ReAgent issues 89, 200, 202), so the
report carries the logged baseline, raw and normalized values with intervals, effective sample
sizes, the reward model's held-out error and a plain-language verdict.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import ActionKind
from evaluation.bounds import HighConfidenceBound
from evaluation.errors import ReportError
from evaluation.estimators import Estimate
from evaluation.fqe import FqeFit
from evaluation.health import DataHealth
from evaluation.kernel import KernelSmoothing
from evaluation.reward_model import RewardModelFit

REPORT_FILE = "cpe_report.json"
HEADLINE_ESTIMATOR = "dr"  # the default of reports written before the headline was chosen per problem


class ActionSummary(BaseModel):
    """How the target policy uses one action compared with the logged policy, and what it is worth."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    action: str
    logged_share: float = Field(description="share of logged decisions that took this action")
    target_share: float = Field(description="mean probability the target policy gives this action")
    logged_mean_reward: float | None = Field(description="mean reward where it was logged; None if never")
    model_mean_reward: float = Field(description="mean q̂(x, action) over all logged contexts")


class ActionDimensionSummary(BaseModel):
    """One action dimension (continuous) or candidate feature (parametric): logged vs target use.

    Continuous: the logged action vs the target's draws in that dimension. Parametric: the chosen
    candidate's feature vs its expectation over the candidates under the target's probabilities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    name: str
    logged_mean: float
    target_mean: float
    logged_std: float
    target_std: float


class WeightHistogram(BaseModel):
    """Distribution of the one-step importance weights π/μ (log-spaced bins; zeros counted apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: list[float]
    counts: list[int]
    zeros: int = Field(description="decisions the target policy would never take (weight 0)")


class CpeReport(BaseModel):
    """Counterfactual evaluation of one model version on logged timelines."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    # 2: headline_reason, problem, max_episode_length, bounds; 3: data_health
    schema_version: Literal[1, 2, 3] = 3
    model_version: str
    action_kind: ActionKind = ActionKind.DISCRETE
    logged_policy_versions: list[str]
    n_decisions: int
    n_episodes: int
    logged_value: float = Field(description="mean logged reward per decision")
    logged_episode_value: float = Field(description="mean discounted logged return per episode")
    gamma: float
    estimates: dict[str, Estimate]
    headline: str = Field(HEADLINE_ESTIMATOR, description="key of the estimate the gate judges")
    headline_reason: str = Field("", description="why the gate judges that estimate (config or problem)")
    problem: Literal["one_step", "multi_step"] = Field(
        "one_step",
        description="multi_step: decisions change later states, so only sequential estimates value the policy",
    )
    max_episode_length: int = 1
    bounds: list[HighConfidenceBound] = Field(
        default_factory=list,
        description="high-confidence lower bounds on the importance-weighted terms (ips per decision for one-step "
        "problems, pdis per episode for multi-step ones); empty when those terms overflow",
    )
    reward_model: RewardModelFit
    fqe: FqeFit | None = None
    actions: list[ActionSummary] = Field(default_factory=list, description="per action (discrete)")
    action_dimensions: list[ActionDimensionSummary] = Field(
        default_factory=list,
        description="per action dimension (continuous) or candidate feature (parametric)",
    )
    kernel: KernelSmoothing | None = Field(None, description="the kernel behind the weights (continuous)")
    weight_histogram: WeightHistogram | None = None
    data_health: DataHealth | None = Field(
        None,
        description="logged-data health of the evaluated timelines (`evaluation.health`); a failed blocking "
        "check rejects the model at the gate. None in reports written before it was measured",
    )
    reliable: bool
    warnings: list[str] = Field(default_factory=list)
    verdict: str
    data_start: datetime | None = None
    data_end: datetime | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def headline_estimate(self) -> Estimate:
        return self.estimates[self.headline]


def save_report(report: CpeReport, directory: Path | str) -> Path:
    """Write `directory/cpe_report.json` (directory created) and return its path."""
    path = Path(directory) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def load_report(path: Path | str) -> CpeReport:
    """Read a report written by `save_report` (a file, or a directory holding cpe_report.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    try:
        return CpeReport.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ReportError(f"no CPE report at {path}; run the evaluation for that version first") from exc
    except ValidationError as exc:
        raise ReportError(
            f"{path} is not a valid CpeReport: {exc.errors()[:3]}; re-run the evaluation"
        ) from exc


def describe_verdict(
    model_version: str,
    logged_value: float,
    estimate: Estimate,
    reliable: bool,
    warnings: list[str],
    unit: str = "mean reward per decision",
) -> str:
    """One sentence a product owner can act on, built from the headline estimate; `unit` names what
    its value measures (a sequential headline: the discounted return per episode, `logged_value` too)."""
    pct = int(round(estimate.confidence * 100))
    head = (
        f"Model {model_version} as served is estimated at {estimate.normalized:.2f}× the logged policy "
        f"({pct}% CI {estimate.normalized_ci_low:.2f}–{estimate.normalized_ci_high:.2f}): "
        f"{estimate.value:.4g} {unit} ({pct}% CI {estimate.ci_low:.4g} to "
        f"{estimate.ci_high:.4g}) vs {logged_value:.4g} logged"
    )
    if estimate.interval == "truncated_is":
        head += (
            "; the interval is the truncated importance-sampling bound, which holds whatever the weights' tail "
            "(a bootstrap interval would not here)"
        )
    if not reliable:
        return f"{head}; NOT reliable: {'; '.join(warnings)}."
    if estimate.normalized_ci_low >= 1.0:
        return f"{head}; it is better than the logged policy with {pct}% confidence."
    if estimate.normalized_ci_high < 1.0:
        return f"{head}; it is worse than the logged policy with {pct}% confidence."
    return f"{head}; the data cannot tell it apart from the logged policy."
