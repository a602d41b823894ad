"""The app manifest: one YAML file that brings an app to streamrl, validated before anything starts.

A manifest says what the app decides (its action kind), from what (its context features), for what
(its reward, a weighted sum of the metrics its reward events carry), with which learner and
exploration, when a candidate may replace the served model (the gate and the data-health
thresholds) and when the loop refreshes. `app_config` turns it, plus the environment file (stack
addresses, stage defaults), into the app's own `StreamrlConfig`: topics, run folder, Feast project
and ports are namespaced by the app's name, so several apps share one stack without sharing data.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contracts import ActionKind, StreamrlError, Topics
from contracts.config_file import read_yaml_mapping, validation_error
from evaluation.bounds import BoundMethod
from evaluation.config import CanaryConfig, HeadlineName
from evaluation.health import HealthThresholds
from features.identify import FeatureOverride
from features.spec import FeatureType
from serving.config import ContinuousActionConfig, FallbackConfig, UniformFallbackConfig
from trainer.algorithms import ALGORITHM_KINDS, TRAIN_FUNCTIONS, AlgorithmConfig
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig

MANIFEST_SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"  # a topic, folder and Feast project prefix


class ManifestError(StreamrlError):
    """A manifest is missing, not YAML, does not validate, or contradicts itself or a running app."""

    def __init__(self, message: str, *, path: Path | None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- features ---------------------------------------------------------------------------------
class FeatureSpec(_Section):
    """One context feature: its name in the request's `context_features`, and optionally a forced
    normalization type (else identified from the data, `features.identify`). All of an app's
    features live in its one Feast feature view (`AppManifest.feature_view`)."""

    name: str = Field(min_length=1, max_length=128)
    type: FeatureType | None = None


# --- actions: one model per kind, a union on `kind` ---------------------------------------------
class DiscreteActions(_Section):
    """A fixed set of named actions; the model scores every one."""

    kind: Literal["discrete"] = "discrete"
    names: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=2)

    @field_validator("names")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        _refuse_duplicates(value, "action names")
        return value


class ParametricActions(_Section):
    """Per-request candidates, each described by these features (the request carries them)."""

    kind: Literal["parametric"] = "parametric"
    candidate_features: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=1)

    @field_validator("candidate_features")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        _refuse_duplicates(value, "candidate_features")
        return value


class ContinuousActions(_Section):
    """A bounded real vector, one named dimension per entry, in vector order."""

    kind: Literal["continuous"] = "continuous"
    dimensions: list[ContinuousActionConfig] = Field(min_length=1)

    @field_validator("dimensions")
    @classmethod
    def _unique(cls, value: list[ContinuousActionConfig]) -> list[ContinuousActionConfig]:
        _refuse_duplicates([d.name for d in value], "action dimension names")
        return value


ActionSpace = Annotated[DiscreteActions | ParametricActions | ContinuousActions, Field(discriminator="kind")]


# --- reward -----------------------------------------------------------------------------------
class RewardSpec(_Section):
    """The reward the loop maximizes: Σ weight × metric over the metrics of the reward events
    attributed to a decision within `attribution_window_s` (Horizon's notification reward was
    "engagement minus a cost per notification sent": `{engaged: 1.0, sent: -0.1}`).

    Empty `metrics` means the events' own `reward` field is the reward."""

    metrics: dict[Annotated[str, Field(min_length=1, max_length=128)], float] = Field(default_factory=dict)
    attribution_window_s: float = Field(3600.0, gt=0)
    mdp_idle_timeout_s: float = Field(
        1800.0, gt=0, description="an entity's episode closes this long after its last attribution window"
    )
    max_mdp_length: int | None = Field(None, gt=0, description="longer episodes are outliers, not emitted")


# --- gate and health --------------------------------------------------------------------------
class GateSpec(_Section):
    """When a candidate may replace the served model (`evaluation.GateConfig`, plus the estimator)."""

    problem: Literal["auto", "one_step", "multi_step"] = "auto"
    headline: HeadlineName = "auto"
    threshold: float = 1.0
    min_effective_sample_size: float = Field(100.0, ge=0)
    max_swing: float | None = Field(None, gt=0)
    require_bound: BoundMethod | None = None
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(200, ge=10)
    gamma: float = Field(1.0, ge=0, le=1, description="discount of the sequential estimate")
    min_rows: int = Field(1000, ge=1, description="fewer evaluation decisions than this cannot deploy")
    canary: CanaryConfig | None = Field(
        None,
        description="{share, min_episodes, confidence}: a candidate the logged data cannot judge serves this "
        "share of episodes until realized returns decide (docs/evaluation.md); null: it is rejected",
    )


# --- schedule ---------------------------------------------------------------------------------
_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class RefreshSpec(_Section):
    """When the loop trains a candidate: every day at `daily_at_utc`, and/or whenever
    `every_new_rows` timeline rows arrived since the last refresh (whichever comes first)."""

    daily_at_utc: str | None = Field("03:00", description="HH:MM, UTC; null: no daily refresh")
    every_new_rows: int | None = Field(None, gt=0)
    train_days: float = Field(7.0, gt=0, description="train on the last N days of timelines")
    min_training_rows: int = Field(1000, ge=1, description="fewer timeline rows: skip the refresh, say why")
    retry_backoff_s: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [60.0, 300.0, 900.0],
        description="a failed refresh is retried after each of these delays, then waits for its next turn",
    )

    @field_validator("daily_at_utc")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None and not _HH_MM.match(value):
            raise ValueError(f"expected a UTC time as HH:MM (e.g. '03:00'), got {value!r}")
        return value

    @model_validator(mode="after")
    def _some_trigger(self) -> RefreshSpec:
        if self.daily_at_utc is None and self.every_new_rows is None:
            raise ValueError("set daily_at_utc and/or every_new_rows: otherwise the app never refreshes")
        return self

    def next_daily(self, after: datetime) -> datetime | None:
        """The first daily refresh time strictly after `after` (UTC), or None without a daily time."""
        if self.daily_at_utc is None:
            return None
        hours, minutes = (int(x) for x in self.daily_at_utc.split(":"))
        at = datetime.combine(after.astimezone(UTC).date(), time(hours, minutes), tzinfo=UTC)
        return at if at > after else at + timedelta(days=1)


class ServingSpec(_Section):
    """The app's serving process: its port (None: `streamrl up` assigns one) and day 0."""

    port: int | None = Field(None, ge=1, le=65535)
    day0: FallbackConfig = Field(
        default_factory=UniformFallbackConfig,
        description="what is served before the first model: `uniform` (explores, logs) or `none` (503; "
        "the app decides by its own rule and logs through POST /v1/decisions)",
    )


class MonitoringSpec(_Section):
    """The app's monitor: its alert thresholds and web port (None: `streamrl up` assigns one)."""

    enabled: bool = True
    web_port: int | None = Field(None, ge=1, le=65535)
    window_s: int = Field(60, gt=0)
    min_propensity: float = Field(0.01, ge=0, le=1, description="alert below this logged propensity")
    max_reward_drop: float = Field(0.5, gt=0, description="alert when mean reward drops by this fraction")


# --- the manifest -----------------------------------------------------------------------------
class AppManifest(_Section):
    """One app: see the module docstring and `streamrl init NAME` for a commented example."""

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    app: str = Field(pattern=NAME_PATTERN, description="lowercase name: topics, folders, routes")
    entity_key: str = Field(
        "entity_id", min_length=1, max_length=64, description="what a decision's entity_id identifies"
    )
    feature_view: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_]*$", description="the Feast feature view (default <app>_context)"
    )
    features: list[FeatureSpec] = Field(min_length=1)
    actions: ActionSpace
    reward: RewardSpec = Field(default_factory=RewardSpec)
    trainer: AlgorithmConfig
    candidates: list[dict[str, Any]] = Field(
        default_factory=list,
        description="a small grid: each entry overrides keys of `trainer`; every refresh trains them all "
        "and deploys the best by its CPE lower bound (Bonferroni-corrected: see docs/onboarding.md)",
        max_length=8,
    )
    exploration: ExplorationConfig = Field(default_factory=lambda: EpsilonGreedyExploration(epsilon=0.05))
    gate: GateSpec = Field(default_factory=GateSpec)
    health: HealthThresholds = Field(default_factory=HealthThresholds)
    refresh: RefreshSpec = Field(default_factory=RefreshSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_is_typed(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict) and "type" not in value:
            raise ValueError(f"trainer needs a `type`: one of {sorted(TRAIN_FUNCTIONS)}")
        actions = info.data.get("actions")
        kind = ALGORITHM_KINDS.get(value.get("type")) if isinstance(value, dict) else None
        if actions is not None and kind is not None and kind.value != actions.kind:
            fitting = sorted(t for t, k in ALGORITHM_KINDS.items() if k.value == actions.kind)
            raise ValueError(
                f"trainer.type {value['type']!r} learns {kind.value} actions but actions.kind is "
                f"{actions.kind!r}; use one of {fitting}"
            )
        if isinstance(value, dict) and isinstance(actions, ContinuousActions):
            # A continuous learner's bounds are the action space's: stated once, in `actions`.
            bounds = {
                "action_low": [d.low for d in actions.dimensions],
                "action_high": [d.high for d in actions.dimensions],
            }
            for key, wanted in bounds.items():
                if key in value and [float(x) for x in value[key]] != wanted:
                    raise ValueError(
                        f"trainer.{key} {value[key]} contradicts the bounds in actions.dimensions {wanted}; "
                        f"drop trainer.{key} (it is taken from actions)"
                    )
            value = {**value, **bounds}
        return value

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[FeatureSpec]) -> list[FeatureSpec]:
        _refuse_duplicates([f.name for f in value], "feature names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AppManifest:
        if isinstance(self.actions, ParametricActions):
            clash = sorted(set(self.actions.candidate_features) & {f.name for f in self.features})
            if clash:
                raise ValueError(
                    f"{clash} are both context features and candidate_features; a name must be one or the other"
                )
        for index, overrides in enumerate(self.candidates):
            if "type" in overrides and overrides["type"] != self.trainer.type:
                raise ValueError(
                    f"candidates[{index}] changes the trainer type to {overrides['type']!r}; a grid varies "
                    f"the knobs of {self.trainer.type!r} only"
                )
            try:
                self.candidate_configs_at(index)
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in first["loc"][1:]) or "<root>"
                raise ValueError(f"candidates[{index}].{key}: {first['msg']}") from None
        return self

    # --- what the stages need ------------------------------------------------------------------
    @property
    def action_kind(self) -> ActionKind:
        return ActionKind(self.actions.kind)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def topics(self) -> Topics:
        return Topics(
            decisions=f"{self.app}.decisions",
            rewards=f"{self.app}.rewards",
            dead_letters=f"{self.app}.dead_letters",
            metrics=f"{self.app}.metrics",
        )

    def candidate_configs_at(self, index: int) -> AlgorithmConfig:
        return _ALGORITHM.validate_python({**self.trainer.model_dump(), **self.candidates[index]})

    def candidate_configs(self) -> list[AlgorithmConfig]:
        """The configs one refresh trains: the grid's entries over `trainer`, or `trainer` alone."""
        if not self.candidates:
            return [self.trainer]
        return [self.candidate_configs_at(i) for i in range(len(self.candidates))]

    def incompatible_change(self, running: AppManifest) -> list[str]:
        """What in this manifest changes the running app's contract: its action space or forced
        feature types (the models served and the specs published depend on them). Empty: safe."""
        changes = []
        if self.actions != running.actions:
            changes.append(
                f"actions: {running.actions.model_dump(mode='json')} -> {self.actions.model_dump(mode='json')}"
            )
        old = {f.name: f.type for f in running.features}
        new = {f.name: f.type for f in self.features}
        for name in sorted(old.keys() | new.keys()):
            if name in old and name in new and old[name] != new[name]:
                changes.append(f"feature {name!r} type: {old[name]} -> {new[name]}")
            elif name not in new:
                changes.append(f"feature {name!r} removed")
        return changes


_ALGORITHM: TypeAdapter[AlgorithmConfig] = TypeAdapter(AlgorithmConfig)


def _refuse_duplicates(names: list[str], what: str) -> None:
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{what} must be unique; duplicated: {duplicated}")


def load_manifest(path: Path) -> AppManifest:
    """Read and validate a manifest; errors name the file, the key, the value and the expectation."""
    path = Path(path)
    data = read_yaml_mapping(path, _manifest_error)
    if "schema_version" not in data:
        raise ManifestError(
            f"{path}: key 'schema_version' is missing: expected `schema_version: {MANIFEST_SCHEMA_VERSION}`",
            path=path,
            key="schema_version",
        )
    try:
        return AppManifest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, _manifest_error, union_tags=_UNION_TAGS) from exc


def _manifest_error(message: str, path: Path, key: str | None) -> ManifestError:
    return ManifestError(message, path=path, key=key)


_UNION_TAGS = (
    "discrete",
    "parametric",
    "continuous",
    "greedy",
    "epsilon_greedy",
    "softmax",
    "none",
    "uniform",
    *TRAIN_FUNCTIONS,
)


def check_distinct(manifests: list[tuple[Path, AppManifest]]) -> None:
    """Several apps on one stack: names and explicit ports must not collide."""
    seen: dict[str, Path] = {}
    ports: dict[int, Path] = {}
    for path, manifest in manifests:
        if manifest.app in seen:
            raise ManifestError(
                f"{path}: key 'app' has value {manifest.app!r}: already used by {seen[manifest.app]}; "
                "app names must be unique on a stack",
                path=path,
                key="app",
            )
        seen[manifest.app] = path
        port = manifest.serving.port
        if port is not None:
            if port in ports:
                raise ManifestError(
                    f"{path}: key 'serving.port' has value {port}: already used by {ports[port]}",
                    path=path,
                    key="serving.port",
                )
            ports[port] = path


def forced_types(manifest: AppManifest) -> dict[str, FeatureOverride]:
    """The manifest's forced normalization types, as `NormalizationConfig.overrides` entries."""
    return {f.name: FeatureOverride(feature_type=f.type) for f in manifest.features if f.type is not None}
