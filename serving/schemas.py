"""HTTP API records of `/v1/act`, `/v1/decisions` and their batches, one request and response per kind.

Requests are strict (no string-to-number coercion, no NaN/inf, unknown keys rejected) so a
client bug shows up as a 422 naming the field instead of a silently different decision.
`action_kind` tells the kinds apart and defaults to `"discrete"`, so requests written before
kinds existed keep their meaning:

| kind | the request adds | the response's `action` |
| --- | --- | --- |
| discrete | `possible_actions: [name, ...]` | one of the possible action names, with `action_probability` |
| parametric | `candidates: [{"id", "features": {...}}, ...]` | the chosen candidate's id, with `action_probability` |
| continuous | nothing (context only) | the action vector in the model's dimension order, with `action_log_density` and `action_mean` |

`/v1/decisions` (log-only mode) takes the same request plus the app's own choice and its
propensity (`action` + `action_probability`, or the vector + `action_log_density`) and `policy`,
the app's label that is logged as the decision's `model_version`; `/v1/decisions/batch` takes
several of them.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]
Probability = Annotated[float, Field(gt=0.0, le=1.0, description="in (0, 1]")]
FeatureMap = dict[str, float | None]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _duplicates(values: list[str]) -> list[str]:
    # Counter, not values.count per value: the lists are validated before the limits are checked
    return sorted(v for v, n in Counter(values).items() if n > 1)


class _Context(_Record):
    """Who is deciding and what we know right now: common to every kind."""

    schema_version: Literal[1] = 1
    entity_id: NonEmptyStr
    context_features: FeatureMap = Field(
        default_factory=dict, description="raw feature values; null = missing; these win over online ones"
    )
    mdp_id: NonEmptyStr | None = Field(None, description="episode id; defaults to entity_id")
    sequence_number: int | None = Field(
        None, ge=0, description="order within the MDP; defaults to ms since epoch"
    )
    request_id: NonEmptyStr | None = Field(None, description="defaults to a fresh uuid4; rewards join on it")

    @model_validator(mode="after")
    def _fill_defaults(self) -> _Context:
        # Frozen model: defaults that depend on other fields are set once, here.
        if self.mdp_id is None:
            object.__setattr__(self, "mdp_id", self.entity_id)
        if self.sequence_number is None:
            object.__setattr__(self, "sequence_number", time.time_ns() // 1_000_000)
        if self.request_id is None:
            object.__setattr__(self, "request_id", str(uuid.uuid4()))
        return self


class Candidate(_Record):
    """One parametric action: an id the app knows it by, and the features the model scores it on."""

    id: NonEmptyStr
    features: FeatureMap = Field(description="raw action feature values (at least one); null = missing")

    @field_validator("features")
    @classmethod
    def _has_features(cls, value: FeatureMap) -> FeatureMap:
        if not value:
            raise ValueError('a candidate needs at least one feature, e.g. {"price": 3.0}')
        return value


class DiscreteActRequest(_Context):
    """Ask for one decision among named actions."""

    action_kind: Literal["discrete"] = "discrete"
    possible_actions: list[NonEmptyStr] = Field(min_length=1)

    @field_validator("possible_actions")
    @classmethod
    def _unique_actions(cls, value: list[str]) -> list[str]:
        if duplicates := _duplicates(value):
            raise ValueError(f"possible_actions must be unique; duplicated: {duplicates}")
        return value


class ParametricActRequest(_Context):
    """Ask for one decision among this request's candidates, each described by its features."""

    action_kind: Literal["parametric"]
    candidates: list[Candidate] = Field(min_length=1)

    @field_validator("candidates")
    @classmethod
    def _unique_ids(cls, value: list[Candidate]) -> list[Candidate]:
        if duplicates := _duplicates([c.id for c in value]):
            raise ValueError(f"candidate ids must be unique; duplicated: {duplicates}")
        return value


class ContinuousActRequest(_Context):
    """Ask for one continuous action vector (the model knows the dimensions and bounds)."""

    action_kind: Literal["continuous"]


def _kind_of(value: Any) -> str:
    """The union member a request body is validated as: its `action_kind`, "discrete" when absent."""
    if isinstance(value, dict):
        return value.get("action_kind", "discrete")
    return getattr(value, "action_kind", "discrete")


_KIND_ERROR = {
    "custom_error_type": "action_kind",
    "custom_error_message": "action_kind must be one of 'discrete' (default), 'parametric', 'continuous'",
}

ActRequest = Annotated[
    Annotated[DiscreteActRequest, Tag("discrete")]
    | Annotated[ParametricActRequest, Tag("parametric")]
    | Annotated[ContinuousActRequest, Tag("continuous")],
    Discriminator(_kind_of, **_KIND_ERROR),
]


class _Decided(_Record):
    schema_version: Literal[1] = 1
    request_id: str
    model_version: str
    mdp_id: str
    sequence_number: int


class DiscreteActResponse(_Decided):
    """The action taken, the probability it was taken with, and which model took it."""

    action_kind: Literal["discrete"] = "discrete"
    action: str
    action_probability: float


class ParametricActResponse(_Decided):
    """The chosen candidate's id and its probability under the served distribution over the candidates."""

    action_kind: Literal["parametric"] = "parametric"
    action: str = Field(description="id of the chosen candidate")
    action_probability: float


class ContinuousActResponse(_Decided):
    """The sampled action vector, its log density under the served policy, and the policy's mean."""

    action_kind: Literal["continuous"] = "continuous"
    action: list[float] = Field(description="one value per action dimension, in the model's order")
    action_log_density: float = Field(description="log density of `action` under the served policy")
    action_mean: list[float] = Field(description="the policy's mean action (greedy), same order")


class NotServedResponse(_Record):
    """No model decides this episode: nothing is deployed (`serving.day0: none`, or the deployed model
    failed to load) and the canary running beside the app's own policy did not take it. Decide it by
    your own policy and log that decision (`POST /v1/decisions`), as before any model was deployed;
    every request of the episode gets this answer while the canary runs."""

    schema_version: Literal[1] = 1
    action_kind: Literal["not_served"] = "not_served"
    request_id: str
    mdp_id: str
    sequence_number: int
    reason: str


ActResponse = Annotated[
    DiscreteActResponse | ParametricActResponse | ContinuousActResponse | NotServedResponse,
    Field(discriminator="action_kind"),
]


class BatchActRequest(_Record):
    """Several decisions scored in one ONNX call (at most `ServingConfig.max_batch`)."""

    schema_version: Literal[1] = 1
    requests: list[ActRequest] = Field(min_length=1)


class BatchActResponse(_Record):
    """Responses in the order of the requests."""

    schema_version: Literal[1] = 1
    responses: list[ActResponse]


PolicyName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        description="the app's name for the policy that chose (e.g. 'rules-v3'); logged as model_version",
    ),
]


class DiscreteLoggedDecision(DiscreteActRequest):
    """A discrete decision the app took itself, with its propensity."""

    policy: PolicyName
    action: NonEmptyStr
    action_probability: Probability

    @model_validator(mode="after")
    def _chosen_is_possible(self) -> DiscreteLoggedDecision:
        if self.action not in self.possible_actions:
            raise ValueError(f"action {self.action!r} is not among possible_actions {self.possible_actions}")
        return self


class ParametricLoggedDecision(ParametricActRequest):
    """A parametric decision the app took itself: the chosen candidate's id and its propensity."""

    policy: PolicyName
    action: NonEmptyStr = Field(description="id of the chosen candidate")
    action_probability: Probability

    @model_validator(mode="after")
    def _chosen_is_a_candidate(self) -> ParametricLoggedDecision:
        ids = [c.id for c in self.candidates]
        if self.action not in ids:
            raise ValueError(f"action {self.action!r} is not among the candidate ids {ids}")
        return self


class ContinuousLoggedDecision(ContinuousActRequest):
    """A continuous decision the app took itself: the vector and its log density under the app's policy."""

    policy: PolicyName
    action: list[float] = Field(min_length=1, description="one value per action dimension, in order")
    action_log_density: float = Field(description="log density of `action` under the app's policy")


LoggedDecision = Annotated[
    Annotated[DiscreteLoggedDecision, Tag("discrete")]
    | Annotated[ParametricLoggedDecision, Tag("parametric")]
    | Annotated[ContinuousLoggedDecision, Tag("continuous")],
    Discriminator(_kind_of, **_KIND_ERROR),
]


class LoggedDecisionResponse(_Record):
    """The app's decision was queued for the log; what the deployed model would have done instead."""

    schema_version: Literal[1] = 1
    request_id: str
    model_decision: ActResponse | None = Field(
        description="the deployed model's decision for the same request (not logged); null when no "
        "model is loaded or it cannot score this request (see model_decision_error)"
    )
    model_decision_error: str | None = None


class BatchLoggedDecisionRequest(_Record):
    """Several of the app's own decisions (at most `ServingConfig.max_batch`), logged all or none."""

    schema_version: Literal[1] = 1
    decisions: list[LoggedDecision] = Field(min_length=1)


class BatchLoggedDecisionResponse(_Record):
    """One `LoggedDecisionResponse` per decision, in the order of the decisions."""

    schema_version: Literal[1] = 1
    responses: list[LoggedDecisionResponse]


class CanaryHealth(_Record):
    """The canary model serving beside `HealthStatus.model_version`, and its share of the episodes."""

    model_version: str
    share: float = Field(description="share of the episodes (by mdp_id) the canary decides, in (0, 1)")


class HealthStatus(_Record):
    """`/healthz`: which model serves, the canary beside it, and why the server is degraded if it is."""

    schema_version: Literal[1] = 1
    status: Literal["ok", "degraded", "unavailable"]
    model_version: str | None
    canary: CanaryHealth | None = Field(None, description="the canary being served; null when none is")
    degraded_reasons: list[str] = Field(default_factory=list)


class ErrorBody(_Record):
    """Every error response: what went wrong, and the request id to quote in a report."""

    schema_version: Literal[1] = 1
    error: str
    message: str
    request_id: str


async def send_error_body(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    error: str,
    message: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer with an `ErrorBody` straight over ASGI (for middleware that refuses before the app runs)."""
    body = ErrorBody(error=error, message=message, request_id=str(uuid.uuid4())).model_dump_json().encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class DeployRequest(_Record):
    """`POST /v1/admin/deploy`: point the deploy pointer at a registered version."""

    version: NonEmptyStr
    reason: str = Field("deployed through serving's admin route", max_length=512)


class RollbackRequest(_Record):
    """`POST /v1/admin/rollback`: back to the version deployed before the current one."""

    reason: str = Field("rolled back through serving's admin route", max_length=512)


class DeploymentResponse(_Record):
    """The deploy pointer after an admin call; every worker follows it within its poll interval."""

    deployed: str | None
    previous: str | None = Field(description="the version deployed before the call")
    served_here: str | None = Field(description="the version the worker that answered now serves")
