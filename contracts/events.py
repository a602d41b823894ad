"""Events apps log: one decision per served request, and later the rewards attributed to it.

These records cross process and topic boundaries, so they are validated models with a
`schema_version` and unknown keys forbidden. Missing feature values are `None`, never a
sentinel number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.actions import ActionKind

SCHEMA_VERSION = 2  # decisions; version 1 events (no `action_kind`) stay valid as discrete
REWARD_SCHEMA_VERSION = 1

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (UTC), e.g. '2026-11-23T10:00:00Z'")
    return value.astimezone(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


def _check_features(value: dict[str, float | None], what: str) -> None:
    for name, x in value.items():
        if x is not None and not math.isfinite(x):
            raise ValueError(f"{what} {name!r} is {x}; send null for a missing value")


class DecisionEvent(_Event):
    """One decision: what the app saw, what it could do, what it did and with what probability.

    `action_kind` says which fields carry the choice (see `contracts.actions`): discrete and
    parametric decisions name the chosen `action` and its `action_probability`; parametric ones
    also carry `candidate_features`, one feature map per entry of `possible_actions`; continuous
    ones carry `action_vector` (one value per entry of `possible_actions`, the action dimensions)
    and `action_log_density`, the log density of that vector under the policy that drew it.
    """

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    action_kind: ActionKind = ActionKind.DISCRETE
    request_id: NonEmptyStr
    entity_id: NonEmptyStr
    mdp_id: NonEmptyStr
    sequence_number: int = Field(ge=0)
    timestamp: datetime
    context_features: dict[str, float | None]
    possible_actions: list[NonEmptyStr] = Field(min_length=1)
    action: NonEmptyStr | None = None
    action_probability: float | None = None
    candidate_features: list[dict[str, float | None]] | None = None
    action_vector: list[float] | None = None
    action_log_density: float | None = None
    model_version: NonEmptyStr

    _utc = field_validator("timestamp")(_require_utc)

    @field_validator("context_features")
    @classmethod
    def _finite_features(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        _check_features(value, "context feature")
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> DecisionEvent:
        if len(set(self.possible_actions)) != len(self.possible_actions):
            raise ValueError(f"possible_actions has duplicates: {self.possible_actions}")
        if self.schema_version == 1 and self.action_kind is not ActionKind.DISCRETE:
            raise ValueError(
                f"schema_version 1 decisions are discrete; send schema_version 2 for action_kind "
                f"{self.action_kind.value!r}"
            )
        _KIND_CHECKS[self.action_kind](self)
        return self


def _forbid(event: DecisionEvent, *names: str) -> None:
    present = [n for n in names if getattr(event, n) is not None]
    if present:
        raise ValueError(f"{', '.join(present)} do not apply to {event.action_kind.value} decisions")


def _check_chosen(event: DecisionEvent) -> None:
    if event.action is None or event.action_probability is None:
        raise ValueError(f"{event.action_kind.value} decisions need action and action_probability")
    p = event.action_probability
    if math.isnan(p) or not (0.0 < p <= 1.0):
        raise ValueError(f"action_probability must be in (0, 1], got {p}")
    if event.action not in event.possible_actions:
        raise ValueError(f"action {event.action!r} is not among possible_actions {event.possible_actions}")


def _check_discrete(event: DecisionEvent) -> None:
    _forbid(event, "candidate_features", "action_vector", "action_log_density")
    _check_chosen(event)


def _check_parametric(event: DecisionEvent) -> None:
    _forbid(event, "action_vector", "action_log_density")
    _check_chosen(event)
    candidates = event.candidate_features
    if candidates is None or len(candidates) != len(event.possible_actions):
        got = "none" if candidates is None else len(candidates)
        raise ValueError(
            f"candidate_features needs one feature map per possible action "
            f"({len(event.possible_actions)}), got {got}"
        )
    for i, features in enumerate(candidates):
        if not features:
            raise ValueError(f"candidate_features[{i}] ({event.possible_actions[i]!r}) has no features")
        _check_features(features, f"candidate_features[{i}] feature")


def _check_continuous(event: DecisionEvent) -> None:
    _forbid(event, "action", "action_probability", "candidate_features")
    vector, log_density = event.action_vector, event.action_log_density
    if vector is None or log_density is None:
        raise ValueError("continuous decisions need action_vector and action_log_density")
    if len(vector) != len(event.possible_actions):
        raise ValueError(
            f"action_vector has {len(vector)} values; expected one per action dimension "
            f"{event.possible_actions}"
        )
    if not all(math.isfinite(x) for x in vector):
        raise ValueError(f"action_vector must be finite, got {vector}")
    if not math.isfinite(log_density):
        raise ValueError(f"action_log_density must be finite, got {log_density}")


_KIND_CHECKS = {
    ActionKind.DISCRETE: _check_discrete,
    ActionKind.PARAMETRIC: _check_parametric,
    ActionKind.CONTINUOUS: _check_continuous,
}


class RewardEvent(_Event):
    """A reward and/or named metrics observed after a decision, joined by request id.

    An app whose manifest defines its reward as a weighted sum of metrics (`reward.metrics`) may
    send only `metrics`; the loop computes the reward with `reward_value`. Otherwise `reward` is it.
    """

    schema_version: Literal[1] = REWARD_SCHEMA_VERSION
    request_id: NonEmptyStr
    timestamp: datetime
    reward: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    _utc = field_validator("timestamp")(_require_utc)

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"reward must be a finite number, got {value}")
        return value

    @model_validator(mode="after")
    def _carries_something(self) -> RewardEvent:
        if self.reward is None and not self.metrics:
            raise ValueError("a reward event needs `reward` or at least one entry in `metrics`")
        return self

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for name, x in value.items():
            if not math.isfinite(x):
                raise ValueError(f"metric {name!r} must be finite, got {x}")
        return value


class DeadLetterRecord(_Event):
    """An event that could not be accepted, with why and the exact bytes that arrived."""

    schema_version: Literal[1] = 1
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    payload: str  # original bytes decoded as UTF-8 with errors replaced
    received_at: datetime

    _utc = field_validator("received_at")(_require_utc)


class Topics(BaseModel):
    """Kafka topic names; one place so every stage agrees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decisions: str = "decisions"
    rewards: str = "rewards"
    dead_letters: str = "dead_letters"
    metrics: str = "metrics"


DEFAULT_TOPICS = Topics()


def reward_value(event: RewardEvent, weights: Mapping[str, float] | None) -> float | None:
    """The reward an event carries for an app: Σ weight × metric over `weights` (a metric the event
    lacks counts 0) when the app defines its reward from metrics, else the event's own `reward`
    (None when it has none: the event cannot be scored and is dead-lettered)."""
    if not weights:
        return event.reward
    return float(sum(weight * event.metrics.get(name, 0.0) for name, weight in weights.items()))
