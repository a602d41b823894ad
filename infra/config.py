"""One YAML file per environment, validated into typed sections.

Each stage owns the model of its own knobs (`AlgorithmConfig`, `EvaluationConfig`, …); this module
only composes them and fills in what depends on the environment — addresses of the stack,
paths under the run directory — so stages never read global settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts import DEFAULT_TOPICS, ActionKind, KafkaSecurity, StreamrlError, Topics
from contracts.config_file import read_yaml_mapping, validation_error
from evaluation.config import EvaluationConfig
from features.identify import NormalizationConfig
from features.store import FeastReaderConfig, OnlineReaderConfig
from infra.stack_config import ENV_PREFIX, StackConfig
from serving.config import AuthConfig, ContinuousActionConfig, FallbackConfig, NoFallbackConfig, RequestLimits
from trainer.algorithms import TRAIN_FUNCTIONS, AlgorithmConfig
from trainer.config import DqnConfig
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "local.yaml"

M = TypeVar("M", bound=BaseModel)


class ConfigError(StreamrlError):
    """A configuration file is missing, not YAML, or does not validate."""

    def __init__(self, message: str, *, path: Path, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamSection(_Section):
    """Knobs of the timeline job; paths come from the run directory."""

    attribution_window_s: float = Field(20.0, gt=0)
    mdp_idle_timeout_s: float = Field(5.0, gt=0)
    trigger_interval_s: float = Field(2.0, gt=0)
    max_rows_per_batch: int | None = Field(None, gt=0)
    max_mdp_length: int | None = Field(None, gt=0, description="longer MDPs are outliers and are not emitted")
    closed_mdp_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="how long closed MDP ids are kept to dead-letter late decisions"
    )
    reward_metrics: dict[str, float] | None = Field(
        None, description="the reward as Σ weight × metric of each reward event; None: the events' `reward`"
    )


class FeatureStoreSection(_Section):
    project: str = Field("streamrl", pattern=r"^[a-z][a-z0-9_]*$")
    # The context features stored and looked up per entity; an app manifest's `features` fill it
    # (`streamrl … --app`). None: no feature store (requests carry their features).
    feature_names: list[str] | None = Field(None, min_length=1)
    feature_view: str = Field("context", pattern=r"^[a-z][a-z0-9_]*$")
    # `{type: feast}` (the Feast client) or `{type: redis}` (pipelined reads, ~5× faster for batches)
    online_reader: OnlineReaderConfig = Field(default_factory=FeastReaderConfig)
    ttl_s: int = Field(7 * 24 * 3600, gt=0)


class ServingSection(_Section):
    """`serving.ServingConfig`'s knobs an environment sets; addresses and paths come from the rest."""

    port: int = Field(18080, ge=1, le=65535)
    poll_interval_s: float = Field(1.0, gt=0)
    max_batch: int = Field(1000, ge=1, le=10_000)
    # caps on one call (body bytes, features, list items, string chars)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    auth: AuthConfig = Field(default_factory=AuthConfig)  # bearer tokens (off: the local demo)
    feature_retry_s: float = Field(5.0, gt=0)  # a failed online read: request features only for this long
    seed: int | None = 1234
    workers: int = Field(1, ge=1, le=64)  # serving processes on the port, each hot-swapping on its own
    inference_threads: int = Field(4, ge=1, le=256)
    decision_queue_size: int = Field(10_000, ge=1)
    decision_retry_after_s: int = Field(1, ge=0)
    log_flush_interval_s: float = Field(0.2, gt=0)
    log_flush_timeout_s: float = Field(10.0, gt=0)
    # None: idempotent, except on the local stack's durable (s3) broker, whose SIGKILL loses
    # acknowledged idempotent writes: there the decision log is at least once (docs/operations.md).
    decision_log_idempotent: bool | None = None
    # Day 0 and the served kind: what `/v1/act` does with no model (`none`: 503, `uniform`), the
    # only kind served (None: the first model's), and the continuous action box (see ServingConfig).
    fallback: FallbackConfig = Field(default_factory=NoFallbackConfig)
    action_kind: ActionKind | None = None
    continuous_actions: list[ContinuousActionConfig] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _kind_fits_actions(self) -> ServingSection:
        # ServingConfig checks this too; here it fails while the file is loaded, naming the file.
        if self.continuous_actions is not None and self.action_kind not in (None, ActionKind.CONTINUOUS):
            raise ValueError(
                f"continuous_actions is set but action_kind is {self.action_kind.value!r}; "
                "drop continuous_actions or set action_kind: continuous"
            )
        return self


class MonitoringSection(_Section):
    """`monitoring.MonitoringConfig`'s knobs an environment sets (alert thresholds included)."""

    enabled: bool = True
    window_s: int = Field(60, gt=0)
    web_port: int = Field(16066, ge=1, le=65535)
    min_propensity: float = Field(0.01, ge=0, le=1, description="alert below this logged propensity")
    min_log_density: float | None = Field(
        None,
        description="alert below this continuous log density; None = off (units depend on the action box)",
    )
    max_reward_drop: float = Field(0.5, gt=0, description="alert when mean reward drops by this fraction")


class DemoSection(_Section):
    """`streamrl demo` (infra/demo.py): the notifications example app (apps/notifications: its manifest
    and simulator) through `streamrl up`, for `days` simulated days of `users` users."""

    days: int = Field(3, ge=1, le=30)
    users: int = Field(4000, ge=1)
    day_timeout_s: float = Field(
        900.0, gt=0, description="how long one day may take: its timeline rows, then the scheduler's refresh"
    )
    # How models explore when `streamrl refresh` runs without --app (an app's manifest has `exploration`).
    learned_exploration: ExplorationConfig = Field(
        default_factory=lambda: EpsilonGreedyExploration(epsilon=0.05)
    )


class StreamrlConfig(_Section):
    """The whole environment: stack addresses, topics, and every stage's knobs."""

    schema_version: Literal[1] = 1
    run_dir: Path = Path("runs/demo")
    # Where each app of `streamrl up` lives: <apps_dir>/<app>/ (timelines, registry, reports, logs).
    apps_dir: Path = Path("runs/apps")
    stack: StackConfig = Field(default_factory=StackConfig)
    # How every Kafka client (decision log, stream, ingest, monitor, status) authenticates.
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topics: Topics = DEFAULT_TOPICS
    stream: StreamSection = Field(default_factory=StreamSection)
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    feature_store: FeatureStoreSection = Field(default_factory=FeatureStoreSection)
    # The refresh's algorithm: any `type` in `trainer.algorithms.TRAIN_FUNCTIONS` (default dqn).
    trainer: AlgorithmConfig = Field(default_factory=DqnConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingSection = Field(default_factory=ServingSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    demo: DemoSection = Field(default_factory=DemoSection)

    @field_validator("trainer", mode="before")
    @classmethod
    def _dqn_unless_typed(cls, value: Any) -> Any:
        """A `trainer:` section without `type` is DQN, as it was before the section became a union."""
        if isinstance(value, dict) and "type" not in value:
            return {**value, "type": "dqn"}
        return value


def load_model(path: Path, model: type[M], *, overrides: dict[str, Any] | None = None) -> M:
    """Read YAML at `path` and validate it into `model`, with an error a person can act on."""
    path = Path(path)
    data = _deep_merge(read_yaml_mapping(path, _config_error), overrides or {})
    if model is StreamrlConfig:
        data = _deep_merge(data, {"stack": _stack_environment()})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, _config_error, union_tags=_UNION_TAGS) from exc


def _config_error(message: str, path: Path, key: str | None) -> ConfigError:
    return ConfigError(message, path=path, key=key)


# Tags of the discriminated unions in the file, dropped from error keys ("trainer.gamma", not
# "trainer.dqn.gamma"): exploration configs and algorithm types.
_UNION_TAGS = ("greedy", "epsilon_greedy", "softmax", "none", "uniform", *TRAIN_FUNCTIONS)


def load_config(path: Path | None = None, *, overrides: dict[str, Any] | None = None) -> StreamrlConfig:
    """Load an environment file (default: the packaged local one) with optional overrides."""
    return load_model(path or DEFAULT_CONFIG, StreamrlConfig, overrides=overrides)


def _stack_environment() -> dict[str, str]:
    """`STREAMRL_<FIELD>` variables win over the file's `stack:` section (e.g. STREAMRL_BROKER_PORT)."""
    names = (name for name in StackConfig.model_fields if name != "schema_version")
    return {
        name: os.environ[ENV_PREFIX + name.upper()]
        for name in names
        if ENV_PREFIX + name.upper() in os.environ
    }


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, mapping by mapping; a mapping whose `type` changes replaces the old one
    (`trainer: {type: sac, …}` over a dqn section must not inherit the dqn keys)."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and old.get("type") == value.get("type", old.get("type"))
        ):
            merged[key] = _deep_merge(old, value)
        else:
            merged[key] = value
    return merged
