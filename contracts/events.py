"""Events apps log: one decision per served request, and later the rewards attributed to it.

These records cross process and topic boundaries, so they are validated models with a
`schema_version` and unknown keys forbidden. Missing feature values are `None`, never a
sentinel number.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (UTC), e.g. '2026-11-23T10:00:00Z'")
    return value.astimezone(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


class DecisionEvent(_Event):
    """One decision: what the app saw, what it could do, what it did and with what probability."""

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: NonEmptyStr
    entity_id: NonEmptyStr
    mdp_id: NonEmptyStr
    sequence_number: int = Field(ge=0)
    timestamp: datetime
    context_features: dict[str, float | None]
    possible_actions: list[NonEmptyStr] = Field(min_length=1)
    action: NonEmptyStr
    action_probability: float
    model_version: NonEmptyStr

    _utc = field_validator("timestamp")(_require_utc)

    @field_validator("context_features")
    @classmethod
    def _finite_features(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for name, x in value.items():
            if x is not None and not math.isfinite(x):
                raise ValueError(f"context feature {name!r} is {x}; send null for a missing value")
        return value

    @field_validator("action_probability")
    @classmethod
    def _propensity_in_range(cls, value: float) -> float:
        if not (0.0 < value <= 1.0) or math.isnan(value):
            raise ValueError(f"action_probability must be in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _action_is_possible(self) -> DecisionEvent:
        if len(set(self.possible_actions)) != len(self.possible_actions):
            raise ValueError(f"possible_actions has duplicates: {self.possible_actions}")
        if self.action not in self.possible_actions:
            raise ValueError(f"action {self.action!r} is not among possible_actions {self.possible_actions}")
        return self


class RewardEvent(_Event):
    """A reward (and optional named metrics) observed after a decision, joined by request id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: NonEmptyStr
    timestamp: datetime
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)

    _utc = field_validator("timestamp")(_require_utc)

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"reward must be a finite number, got {value}")
        return value

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for name, x in value.items():
            if not math.isfinite(x):
                raise ValueError(f"metric {name!r} must be finite, got {x}")
        return value


class DeadLetterRecord(_Event):
    """An event that could not be accepted, with why and the exact bytes that arrived."""

    schema_version: Literal[1] = SCHEMA_VERSION
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
