"""Serving configuration: the `serving:` section of an environment's YAML is validated against it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts import DEFAULT_TOPICS, Topics
from features import FeatureStoreConfig


class ServingConfig(BaseModel):
    """Where to listen, which registry to follow, where decisions go and where features come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    registry_root: Path
    poll_interval_s: float = Field(2.0, gt=0.0, description="how often the deploy pointer is checked")
    bootstrap_servers: str = Field(min_length=1)
    topics: Topics = DEFAULT_TOPICS
    feature_store: FeatureStoreConfig | None = Field(
        None, description="online feature lookup per entity; None serves on request features only"
    )
    seed: int | None = Field(None, description="seed for action sampling; None = fresh entropy")
    max_batch: int = Field(256, ge=1, le=10_000)
    decision_queue_size: int = Field(
        10_000, ge=1, description="decisions waiting to be logged before requests are slowed down"
    )
    decision_enqueue_timeout_s: float = Field(
        10.0,
        ge=0.0,
        description="how long a request waits for room in a full decision queue (back-pressure) "
        "before its decision is counted as failed",
    )
    log_flush_interval_s: float = Field(0.2, gt=0.0, description="how often logged decisions are flushed")
    log_flush_timeout_s: float = Field(10.0, gt=0.0)
