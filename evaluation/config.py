"""Settings of counterfactual evaluation and of the deploy gate; validated, passed down explicitly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.bounds import BoundMethod
from evaluation.fqe import RidgeFqeConfig
from evaluation.health import HealthThresholds
from evaluation.kernel import KernelConfig
from evaluation.reward_model import RidgeRewardModelConfig

HeadlineName = Literal[
    "auto", "dm", "ips", "snips", "dr", "sndr", "switch_dr", "pdis", "sequential_dr", "wdr", "magic", "fqe"
]


class CanaryConfig(BaseModel):
    """What happens to a candidate the logged data cannot judge (`GateDecision.undecided`): it serves
    `share` of the episodes beside the deployed model, and a later refresh compares the realized
    returns of the two (`evaluation.canary.judge_canary`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of episodes (by mdp_id) served by the canary"
    )
    min_episodes: int = Field(
        10, ge=2, description="complete episodes each side needs before the canary is judged"
    )
    confidence: float = Field(
        0.95, gt=0.0, lt=1.0, description="one-sided confidence of Welch's t bound on the return difference"
    )


class GateConfig(BaseModel):
    """When a model may be deployed, judged on the report's headline estimate (`CpeReport.headline`).

    `threshold` applies to the lower bound of the headline's *normalized* interval: 1.0 means "at
    least as good as the logged policy, with the configured confidence".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    threshold: float = 1.0
    min_effective_sample_size: float = Field(100.0, ge=0.0)
    require_bound: BoundMethod | None = Field(
        None,
        description="also require this high-confidence lower bound (t_test or empirical_bernstein on the "
        "importance-weighted terms, `evaluation.bounds`) to clear `threshold`, normalized like the headline",
    )
    max_swing: float | None = Field(
        None,
        gt=0.0,
        description="max relative change of the headline value vs the previous model's report (same headline); a larger swing "
        "holds the model and raises an alert",
    )
    canary: CanaryConfig | None = Field(
        None,
        description="a candidate the data cannot judge (report unreliable or effective sample size too small, "
        "and nothing else wrong) serves a share of episodes until realized returns decide; None: it is rejected",
    )


class EvaluationConfig(BaseModel):
    """How to estimate a model's value from logged timelines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    bootstrap_samples: int = Field(200, ge=10)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    gamma: float = Field(0.9, ge=0.0, le=1.0, description="discount of the sequential estimate")
    seed: int = 0
    min_rows: int = Field(
        1000, ge=1, description="fewer decisions than this: the estimate is marked unreliable and gated out"
    )
    switch_threshold: float = Field(
        10.0, gt=0.0, description="switch-DR drops corrections with weight > this"
    )
    reward_model: RidgeRewardModelConfig = Field(default_factory=RidgeRewardModelConfig)
    fqe: RidgeFqeConfig = Field(default_factory=RidgeFqeConfig)
    kernel: KernelConfig = Field(
        default_factory=KernelConfig, description="continuous actions: kernel bandwidth and target draws"
    )
    holdout_fraction: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="share of the evaluation MDPs withheld from training (`hold_out_mdps`), so the candidate "
        "is never scored on the decisions it was trained on; 0 disables",
    )
    gate: GateConfig = Field(default_factory=GateConfig)
    health: HealthThresholds = Field(
        default_factory=HealthThresholds,
        description="what the logged timelines must satisfy (`evaluation.health`); measured into the report's "
        "data_health, and a breach rejects the candidate at the gate",
    )
    bound_term_range: tuple[float, float] | None = Field(
        None,
        description="the range [low, high] every importance-weighted term (w·r per decision, Σ γ^t w_t r_t per "
        "episode) can take, from reward bounds and weight caps; makes the empirical-Bernstein bound a guarantee "
        "(else it uses the observed range)",
    )

    reward_range: tuple[float, float] | None = Field(
        None,
        description="the range [low, high] every reward can take; the interval of an unreliable headline holds "
        "with the stated confidence whatever the weights given it (else it assumes the logged rewards' range)",
    )

    @field_validator("reward_range")
    @classmethod
    def _reward_range_is_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] <= value[1]:
            raise ValueError(f"reward_range must be [low, high] with low ≤ high, got {list(value)}")
        return value

    @field_validator("bound_term_range")
    @classmethod
    def _range_is_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"bound_term_range must be [low, high] with low < high, got {list(value)}")
        return value

    problem: Literal["auto", "one_step", "multi_step"] = Field(
        "auto",
        description="one_step: decisions do not change later states (a bandit), so one-step estimators value "
        "the policy; multi_step: they do, so only sequential estimators (and FQE) do; auto: multi_step when "
        "any episode has more than one decision",
    )
    headline: HeadlineName = Field(
        "auto",
        description="the estimate the gate judges: auto picks by problem (multi-step: magic where the data confirm FQE, else wdr; one-step: dr); "
        "continuous actions use the kernel_ version of the same estimator",
    )
