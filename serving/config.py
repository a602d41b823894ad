"""Serving configuration: the `serving:` section of an environment's YAML is validated against it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import DEFAULT_TOPICS, ActionKind, KafkaSecurity, Topics
from features import FeatureStoreConfig

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContinuousActionConfig(_Section):
    """One dimension of a continuous action: its name and bounds (env units)."""

    name: NonEmptyStr
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> ContinuousActionConfig:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"continuous action {self.name!r}: need finite low < high, got low={self.low}, "
                f"high={self.high}"
            )
        return self


class NoFallbackConfig(_Section):
    """Without a loaded model, `/v1/act` answers 503 (`NoModelError`)."""

    type: Literal["none"] = "none"


class UniformFallbackConfig(_Section):
    """Without a loaded model, serve uniformly at random (day 0).

    Discrete: each possible action with probability 1/n; parametric: each candidate with 1/n;
    continuous: uniform over `ServingConfig.continuous_actions` bounds, log density −Σ log(high − low).
    Decisions are logged with `model_version` so timelines tell them apart from a model's.
    """

    type: Literal["uniform"] = "uniform"
    model_version: NonEmptyStr = "day0-uniform"


FallbackConfig = Annotated[NoFallbackConfig | UniformFallbackConfig, Field(discriminator="type")]


class AuthConfig(_Section):
    """Bearer tokens for serving (`serving._auth`): off by default (the local demo), on with `enabled`.

    The tokens are secrets, so they are never in this file: they come from the JSON in the
    environment variable `tokens_env`, or from `tokens_file` (a file only the server can read),
    shaped `{"<name>": {"token": "<at least 16 characters>", "scopes": ["act", "admin"]}}`.
    `act` allows the decision routes, `admin` deploy and rollback. `/healthz` and `/metrics` stay
    open (probes and scrapers).
    """

    enabled: bool = False
    tokens_env: str = Field("STREAMRL_SERVING_TOKENS", min_length=1)
    tokens_file: Path | None = None


class RequestLimits(_Section):
    """Caps on one call, checked before any work is done for it (`serving._limits`).

    A body over `max_body_bytes` is refused with 413 before it is read whole; a request with more
    features or list items, or a longer string, than allowed with 422 naming the field. Batches
    are capped by `ServingConfig.max_batch`.
    """

    max_body_bytes: int = Field(1_048_576, ge=1024, description="bytes of one request body (413 beyond)")
    max_features: int = Field(
        512, ge=1, description="entries of one feature map: context_features, a candidate's features"
    )
    max_items: int = Field(
        1000,
        ge=1,
        description="items of one list in a request: possible_actions, candidates, an action vector",
    )
    max_string_chars: int = Field(
        256,
        ge=36,  # a request id serving makes up is a 36-character uuid
        le=512,
        description="characters of one string: ids, action and candidate names, feature names",
    )


class ServingConfig(_Section):
    """Where to listen, which registry to follow, where decisions go and where features come from."""

    schema_version: Literal[1] = 1
    app: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="the app served: its routes are also at /v1/apps/{app}/… (None: /v1/… only)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    registry_root: Path
    poll_interval_s: float = Field(2.0, gt=0.0, description="how often the deploy pointer is checked")
    bootstrap_servers: str = Field(min_length=1)
    kafka_security: KafkaSecurity = Field(
        default_factory=KafkaSecurity, description="how the decision log authenticates to the brokers"
    )
    decision_log_idempotent: bool = Field(
        True,
        description="an idempotent decision log (never a copy); false: at least once (never a loss "
        "on a broker that acknowledges before it stores; copies collapse in the timelines)",
    )
    topics: Topics = DEFAULT_TOPICS
    feature_store: FeatureStoreConfig | None = Field(
        None, description="online feature lookup per entity; None serves on request features only"
    )
    seed: int | None = Field(None, description="seed for action sampling; None = fresh entropy")
    max_batch: int = Field(256, ge=1, le=10_000)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    feature_retry_s: float = Field(
        5.0,
        gt=0.0,
        description="after an online feature read fails, decide on request features for this long, then try the "
        "store again (`serving._breaker`)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="serving processes on the one port (uvicorn workers); each follows the deploy "
        "pointer and hot-swaps on its own",
    )
    inference_threads: int = Field(
        4,
        ge=1,
        le=256,
        description="threads per process for the online feature read, ONNX inference and the decision "
        "hand-off, so the event loop (and /healthz) never waits on them",
    )
    decision_queue_size: int = Field(
        10_000,
        ge=1,
        description="decisions waiting to be logged; a call whose decisions do not fit is refused with 503",
    )
    decision_retry_after_s: int = Field(
        1, ge=0, description="the Retry-After of a 503 refused because the decision queue is full"
    )
    log_flush_interval_s: float = Field(0.2, gt=0.0, description="how often logged decisions are flushed")
    log_flush_timeout_s: float = Field(10.0, gt=0.0)
    action_kind: ActionKind | None = Field(
        None,
        description="the action kind this server serves: requests and deployed models of another kind "
        "are refused. None = the kind of the first model loaded (a later model of another kind is refused)",
    )
    fallback: FallbackConfig = Field(
        default_factory=NoFallbackConfig,
        description="what `/v1/act` serves while no model is loaded: `none` (503) or `uniform` (day 0)",
    )
    continuous_actions: list[ContinuousActionConfig] | None = Field(
        None,
        description="continuous action dimensions in vector order, with bounds: what the uniform "
        "fallback draws from and what `/v1/decisions` checks vectors against before a model is "
        "loaded; a continuous model with other names or bounds is refused",
        min_length=1,
    )

    @field_validator("continuous_actions")
    @classmethod
    def _unique_dimensions(
        cls, value: list[ContinuousActionConfig] | None
    ) -> list[ContinuousActionConfig] | None:
        names = [d.name for d in value or []]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"continuous_actions names must be unique; duplicated: {duplicates}")
        return value

    @model_validator(mode="after")
    def _kind_fits_actions(self) -> ServingConfig:
        if self.continuous_actions is not None and self.action_kind not in (None, ActionKind.CONTINUOUS):
            raise ValueError(
                f"continuous_actions is set but action_kind is {self.action_kind.value!r}; "
                "drop continuous_actions or set action_kind: continuous"
            )
        return self
