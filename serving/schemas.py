"""HTTP API records of `/v1/act` and `/v1/act/batch`.

Requests are strict (no string-to-number coercion, no NaN/inf, unknown keys rejected) so a
client bug shows up as a 422 naming the field instead of a silently different decision.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ActRequest(_Record):
    """Ask for one decision: who, what we know right now, and what we could do."""

    schema_version: Literal[1] = 1
    entity_id: NonEmptyStr
    context_features: dict[str, float | None] = Field(
        default_factory=dict, description="raw feature values; null = missing; these win over online ones"
    )
    possible_actions: list[NonEmptyStr] = Field(min_length=1)
    mdp_id: NonEmptyStr | None = Field(None, description="episode id; defaults to entity_id")
    sequence_number: int | None = Field(
        None, ge=0, description="order within the MDP; defaults to ms since epoch"
    )
    request_id: NonEmptyStr | None = Field(None, description="defaults to a fresh uuid4; rewards join on it")

    @field_validator("possible_actions")
    @classmethod
    def _unique_actions(cls, value: list[str]) -> list[str]:
        duplicates = sorted({a for a in value if value.count(a) > 1})
        if duplicates:
            raise ValueError(f"possible_actions must be unique; duplicated: {duplicates}")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> ActRequest:
        # Frozen model: defaults that depend on other fields are set once, here.
        if self.mdp_id is None:
            object.__setattr__(self, "mdp_id", self.entity_id)
        if self.sequence_number is None:
            object.__setattr__(self, "sequence_number", time.time_ns() // 1_000_000)
        if self.request_id is None:
            object.__setattr__(self, "request_id", str(uuid.uuid4()))
        return self


class ActResponse(_Record):
    """The decision taken, the probability it was taken with, and which model took it."""

    schema_version: Literal[1] = 1
    request_id: str
    action: str
    action_probability: float
    model_version: str
    mdp_id: str
    sequence_number: int


class BatchActRequest(_Record):
    """Several decisions scored in one ONNX call (at most `ServingConfig.max_batch`)."""

    schema_version: Literal[1] = 1
    requests: list[ActRequest] = Field(min_length=1)


class BatchActResponse(_Record):
    """Responses in the order of the requests."""

    schema_version: Literal[1] = 1
    responses: list[ActResponse]


class HealthStatus(_Record):
    """`/healthz`: which model serves, and why the server is degraded if it is."""

    schema_version: Literal[1] = 1
    status: Literal["ok", "degraded", "unavailable"]
    model_version: str | None
    degraded_reasons: list[str] = Field(default_factory=list)


class ErrorBody(_Record):
    """Every error response: what went wrong, and the request id to quote in a report."""

    schema_version: Literal[1] = 1
    error: str
    message: str
    request_id: str
