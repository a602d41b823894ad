"""Per model version, tumbling event-time windows: decisions, what was chosen, rewards, alerts.

What a window reports of its decisions depends on their action kind (`contracts.actions`); the
one table `_DIGESTS` maps each kind to the digest type that extracts it from a `DecisionEvent`
and adds it to a window:

| kind | reported in `MetricsWindow` | alert |
| --- | --- | --- |
| discrete | `action_counts` per action name, `min_propensity` | low_propensity |
| parametric | `parametric`: decisions, mean candidate-set size; `min_propensity` | low_propensity |
| continuous | `continuous`: per-dimension mean and std of the action vector, min and mean log density | low_density |

The aggregation is plain Python so it can be tested without Kafka; the faust agents only
load a `VersionWindows` from their table, call it, and store it back.

Windowing rules (documented here because consumers of the `metrics` topic depend on them):
- A decision counts in the window of its own timestamp; a reward counts in the window of the
  reward's timestamp, attributed to the model version that made the decision.
- A window is emitted once wall-clock time passes `window_end + allowed_lateness_s`. Events that
  arrive later for a window still held in state update it and it is emitted again with
  `revision + 1`: a reader keeps the highest revision per (model_version, window_start).
- A window is forgotten once it has been emitted and left unchanged for `retention_s` of
  wall-clock time (so replaying old data keeps windows open while their events still flow);
  events for a forgotten window are rejected (the caller counts them as too late) rather than
  emitted as a wrong, partial revision.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from contracts import ActionKind, DecisionEvent
from monitoring.config import MonitoringConfig

SCHEMA_VERSION = 2  # of MetricsWindow; version 1 records (discrete decisions only) stay readable
STATE_SCHEMA_VERSION = 1  # of VersionWindows in the worker's table


class AlertKind(StrEnum):
    """Kinds of alert; every alert message starts with its kind followed by ': '."""

    LOW_PROPENSITY = "low_propensity"
    LOW_DENSITY = "low_density"
    REWARD_DROP = "reward_drop"


class ParametricWindow(BaseModel):
    """What a window reports of its parametric decisions (their propensities are in `min_propensity`).

    Chosen candidate ids are per request, so they are not counted; nor are chosen positions, since
    the contract does not order candidates. The candidate-set size says how much choice there was.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    decisions: int = Field(ge=1)
    mean_candidates: float = Field(ge=1)


class ContinuousWindow(BaseModel):
    """What a window reports of its continuous decisions: the action vectors and their log densities.

    `action_mean` / `action_std` are per action dimension (named by `possible_actions`), over the
    decisions that had that dimension; the std is the population one (ddof 0, so 0 for one value).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    decisions: int = Field(ge=1)
    action_mean: dict[str, float]
    action_std: dict[str, float]
    min_log_density: float
    mean_log_density: float


class MetricsWindow(BaseModel):
    """One closed window of one model version, as published on the `metrics` topic.

    `decisions` counts every kind. Discrete decisions are counted per action name in
    `action_counts` (so they number `sum(action_counts.values())`); `min_propensity` is the
    smallest `action_probability` of the window's discrete and parametric decisions. Parametric
    and continuous decisions are summarized in `parametric` and `continuous`, absent when the
    window has none. Schema version 1 records predate those two fields: all their decisions are
    discrete.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    window_start: datetime
    window_end: datetime
    model_version: str
    revision: int = Field(ge=1)
    decisions: int = Field(ge=0)
    action_counts: dict[str, int]
    rewards: int = Field(ge=0)
    reward_sum: float
    mean_reward: float | None
    min_propensity: float | None
    parametric: ParametricWindow | None = None
    continuous: ContinuousWindow | None = None
    alerts: list[str]

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware UTC")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> MetricsWindow:
        if self.schema_version == 1 and (self.parametric or self.continuous):
            raise ValueError(
                "schema_version 1 windows hold discrete decisions only; send schema_version 2 for "
                "parametric or continuous summaries"
            )
        by_kind = sum(self.action_counts.values()) + sum(
            summary.decisions for summary in (self.parametric, self.continuous) if summary is not None
        )
        if by_kind != self.decisions:
            raise ValueError(
                f"decisions is {self.decisions} but action_counts, parametric and continuous "
                f"account for {by_kind}; expected them to add up"
            )
        return self

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


class _Moments(BaseModel):
    """Running count, mean and sum of squared deviations of one series (Welford's update)."""

    model_config = ConfigDict(extra="forbid")

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / self.count)


class _ParametricState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: int = 0
    candidates_sum: int = 0

    def summary(self) -> ParametricWindow:
        return ParametricWindow(
            decisions=self.decisions, mean_candidates=self.candidates_sum / self.decisions
        )


class _ContinuousState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_log_density: float  # created with the window's first continuous decision
    decisions: int = 0
    dimensions: dict[str, _Moments] = Field(default_factory=dict)
    log_density_sum: float = 0.0

    def summary(self) -> ContinuousWindow:
        dims = sorted(self.dimensions)
        return ContinuousWindow(
            decisions=self.decisions,
            action_mean={d: self.dimensions[d].mean for d in dims},
            action_std={d: self.dimensions[d].std for d in dims},
            min_log_density=self.min_log_density,
            mean_log_density=self.log_density_sum / self.decisions,
        )


class WindowState(BaseModel):
    """Running totals of one open window (stored in the faust table as JSON)."""

    model_config = ConfigDict(extra="forbid")

    decisions: int = 0
    action_counts: dict[str, int] = Field(default_factory=dict)
    rewards: int = 0
    reward_sum: float = 0.0
    min_propensity: float | None = None
    parametric: _ParametricState | None = None
    continuous: _ContinuousState | None = None
    revision: int = 0
    dirty: bool = False
    updated_at_s: float = 0.0  # wall-clock epoch seconds of the last change

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    def note_propensity(self, propensity: float) -> None:
        if self.min_propensity is None or propensity < self.min_propensity:
            self.min_propensity = propensity


class _Digest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscreteDigest(_Digest):
    """What a window needs of one discrete decision."""

    kind: Literal[ActionKind.DISCRETE] = ActionKind.DISCRETE
    action: str
    propensity: float

    @classmethod
    def of(cls, event: DecisionEvent) -> DiscreteDigest:
        return cls(action=event.action, propensity=event.action_probability)

    def add_to(self, window: WindowState) -> None:
        window.action_counts[self.action] = window.action_counts.get(self.action, 0) + 1
        window.note_propensity(self.propensity)


class ParametricDigest(_Digest):
    """What a window needs of one parametric decision: its propensity and how many candidates it had."""

    kind: Literal[ActionKind.PARAMETRIC] = ActionKind.PARAMETRIC
    propensity: float
    candidates: int = Field(ge=1)

    @classmethod
    def of(cls, event: DecisionEvent) -> ParametricDigest:
        return cls(propensity=event.action_probability, candidates=len(event.possible_actions))

    def add_to(self, window: WindowState) -> None:
        state = window.parametric = window.parametric or _ParametricState()
        state.decisions += 1
        state.candidates_sum += self.candidates
        window.note_propensity(self.propensity)


class ContinuousDigest(_Digest):
    """What a window needs of one continuous decision: the vector by dimension and its log density."""

    kind: Literal[ActionKind.CONTINUOUS] = ActionKind.CONTINUOUS
    action: dict[str, float]
    log_density: float

    @classmethod
    def of(cls, event: DecisionEvent) -> ContinuousDigest:
        action = dict(zip(event.possible_actions, event.action_vector, strict=True))
        return cls(action=action, log_density=event.action_log_density)

    def add_to(self, window: WindowState) -> None:
        state = window.continuous = window.continuous or _ContinuousState(min_log_density=self.log_density)
        state.decisions += 1
        for name, x in self.action.items():
            state.dimensions.setdefault(name, _Moments()).add(x)
        state.min_log_density = min(state.min_log_density, self.log_density)
        state.log_density_sum += self.log_density


DecisionDigest = Annotated[DiscreteDigest | ParametricDigest | ContinuousDigest, Field(discriminator="kind")]
DECISION_DIGEST: TypeAdapter[DecisionDigest] = TypeAdapter(DecisionDigest)

# The one place monitoring looks at a decision's kind; adding a kind is one digest type + one line.
_DIGESTS: dict[ActionKind, type[DiscreteDigest | ParametricDigest | ContinuousDigest]] = {
    ActionKind.DISCRETE: DiscreteDigest,
    ActionKind.PARAMETRIC: ParametricDigest,
    ActionKind.CONTINUOUS: ContinuousDigest,
}


def digest_decision(event: DecisionEvent) -> DecisionDigest:
    """The part of a validated decision a window aggregates (what the worker sends between agents)."""
    return _DIGESTS[event.action_kind].of(event)


class VersionWindows(BaseModel):
    """All windows held for one model version, keyed by window start (epoch seconds)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = STATE_SCHEMA_VERSION
    model_version: str
    window_s: int = Field(gt=0)
    windows: dict[int, WindowState] = Field(default_factory=dict)
    # Windows starting before this (epoch seconds) were dropped; their events are too late.
    forgotten_before: int | None = None

    def window_start_of(self, timestamp: datetime) -> int:
        """Epoch second at which the tumbling window holding `timestamp` starts."""
        return math.floor(timestamp.timestamp() / self.window_s) * self.window_s

    def _open(self, timestamp: datetime, now: datetime) -> WindowState | None:
        start = self.window_start_of(timestamp)
        if self.forgotten_before is not None and start < self.forgotten_before:
            return None
        state = self.windows.setdefault(start, WindowState())
        state.dirty = True
        state.updated_at_s = now.timestamp()
        return state

    def add_decision(self, timestamp: datetime, decision: DecisionDigest, now: datetime) -> bool:
        """Count one decision of any kind; False when its window was already forgotten (too late)."""
        state = self._open(timestamp, now)
        if state is None:
            return False
        state.decisions += 1
        decision.add_to(state)
        return True

    def add_reward(self, timestamp: datetime, reward: float, now: datetime) -> bool:
        """Count one attributed reward; False when its window was already forgotten (too late)."""
        state = self._open(timestamp, now)
        if state is None:
            return False
        state.rewards += 1
        state.reward_sum += reward
        return True

    def has_due(self, now: datetime, allowed_lateness_s: float) -> bool:
        """Whether `close_due` would emit anything (cheap check for the timer)."""
        cutoff = now.timestamp() - allowed_lateness_s
        return any(s.dirty and start + self.window_s <= cutoff for start, s in self.windows.items())

    def has_expired(self, now: datetime, retention_s: float) -> bool:
        """Whether some emitted window has been unchanged for `retention_s` and can be dropped."""
        cutoff = now.timestamp() - retention_s
        return any(not s.dirty and s.updated_at_s < cutoff for s in self.windows.values())

    def close_due(self, now: datetime, config: MonitoringConfig) -> list[MetricsWindow]:
        """Emit every changed window whose end plus lateness has passed, then drop expired ones."""
        cutoff = now.timestamp() - config.allowed_lateness_s
        emitted: list[MetricsWindow] = []
        for start in sorted(self.windows):
            state = self.windows[start]
            if not state.dirty or start + self.window_s > cutoff:
                continue
            state.revision += 1
            state.dirty = False
            emitted.append(self._to_record(start, state, config))
        expire_before = now.timestamp() - config.retention_s
        for start, state in list(self.windows.items()):
            if not state.dirty and state.updated_at_s < expire_before:
                del self.windows[start]
                self.forgotten_before = max(self.forgotten_before or 0, start + self.window_s)
        return emitted

    def _previous_mean(self, start: int) -> float | None:
        earlier = [s for s in self.windows if s < start and self.windows[s].mean_reward is not None]
        return self.windows[max(earlier)].mean_reward if earlier else None

    def _to_record(self, start: int, state: WindowState, config: MonitoringConfig) -> MetricsWindow:
        continuous = state.continuous.summary() if state.continuous else None
        return MetricsWindow(
            window_start=datetime.fromtimestamp(start, UTC),
            window_end=datetime.fromtimestamp(start + self.window_s, UTC),
            model_version=self.model_version,
            revision=state.revision,
            decisions=state.decisions,
            action_counts=dict(sorted(state.action_counts.items())),
            rewards=state.rewards,
            reward_sum=state.reward_sum,
            mean_reward=state.mean_reward,
            min_propensity=state.min_propensity,
            parametric=state.parametric.summary() if state.parametric else None,
            continuous=continuous,
            alerts=window_alerts(
                self.model_version,
                state.min_propensity,
                state.mean_reward,
                self._previous_mean(start),
                config,
                min_log_density=continuous.min_log_density if continuous else None,
            ),
        )


def window_alerts(
    model_version: str,
    min_propensity: float | None,
    mean_reward: float | None,
    previous_mean_reward: float | None,
    config: MonitoringConfig,
    min_log_density: float | None = None,
) -> list[str]:
    """Alerts for one window: propensities or densities too small to evaluate with, or a sharp reward drop."""
    alerts: list[str] = []
    if min_propensity is not None and min_propensity < config.min_propensity:
        alerts.append(
            f"{AlertKind.LOW_PROPENSITY}: model {model_version!r} logged propensity {min_propensity:.4g} "
            f"< {config.min_propensity:g}; counterfactual estimates will be high-variance, "
            "check its exploration settings"
        )
    if (
        min_log_density is not None
        and config.min_log_density is not None
        and min_log_density < config.min_log_density
    ):
        alerts.append(
            f"{AlertKind.LOW_DENSITY}: model {model_version!r} logged an action of log density "
            f"{min_log_density:.4g} < {config.min_log_density:g}; kernel-smoothed counterfactual "
            "estimates weight such actions by the inverse density, check its exploration noise"
        )
    if mean_reward is not None and previous_mean_reward is not None and previous_mean_reward != 0:
        drop = (previous_mean_reward - mean_reward) / abs(previous_mean_reward)
        if drop > config.max_reward_drop:
            alerts.append(
                f"{AlertKind.REWARD_DROP}: model {model_version!r} mean reward {mean_reward:.4g} is "
                f"{drop:.0%} below the previous window ({previous_mean_reward:.4g}); "
                f"threshold {config.max_reward_drop:.0%}, consider rolling back"
            )
    return alerts
