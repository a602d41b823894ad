"""Per model version, tumbling event-time windows: decisions, action mix, rewards, alerts.

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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitoring.config import MonitoringConfig

SCHEMA_VERSION = 1


class AlertKind(StrEnum):
    """Kinds of alert; every alert message starts with its kind followed by ': '."""

    LOW_PROPENSITY = "low_propensity"
    REWARD_DROP = "reward_drop"


class MetricsWindow(BaseModel):
    """One closed window of one model version, as published on the `metrics` topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
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
    alerts: list[str]

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware UTC")
        return value.astimezone(UTC)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


class WindowState(BaseModel):
    """Running totals of one open window (stored in the faust table as JSON)."""

    model_config = ConfigDict(extra="forbid")

    decisions: int = 0
    action_counts: dict[str, int] = Field(default_factory=dict)
    rewards: int = 0
    reward_sum: float = 0.0
    min_propensity: float | None = None
    revision: int = 0
    dirty: bool = False
    updated_at_s: float = 0.0  # wall-clock epoch seconds of the last change

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None


class VersionWindows(BaseModel):
    """All windows held for one model version, keyed by window start (epoch seconds)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
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

    def add_decision(self, timestamp: datetime, action: str, propensity: float, now: datetime) -> bool:
        """Count one decision; False when its window was already forgotten (too late)."""
        state = self._open(timestamp, now)
        if state is None:
            return False
        state.decisions += 1
        state.action_counts[action] = state.action_counts.get(action, 0) + 1
        if state.min_propensity is None or propensity < state.min_propensity:
            state.min_propensity = propensity
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
            alerts=window_alerts(
                self.model_version,
                state.min_propensity,
                state.mean_reward,
                self._previous_mean(start),
                config,
            ),
        )


def window_alerts(
    model_version: str,
    min_propensity: float | None,
    mean_reward: float | None,
    previous_mean_reward: float | None,
    config: MonitoringConfig,
) -> list[str]:
    """Alerts for one window: propensities too small to evaluate with, or a sharp reward drop."""
    alerts: list[str] = []
    if min_propensity is not None and min_propensity < config.min_propensity:
        alerts.append(
            f"{AlertKind.LOW_PROPENSITY}: model {model_version!r} logged propensity {min_propensity:.4g} "
            f"< {config.min_propensity:g}; counterfactual estimates will be high-variance, "
            "check its exploration settings"
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
