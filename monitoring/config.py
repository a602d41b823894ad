"""Configuration of the monitoring worker: where it reads, how it windows, when it alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import DEFAULT_TOPICS, KafkaSecurity, Topics


class MonitoringConfig(BaseModel):
    """Settings of one monitoring app; crosses a process boundary (`streamrl monitor` → worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    app_id: str = Field(default="streamrl-monitor", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    bootstrap_servers: str = Field(min_length=1)
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topics: Topics = DEFAULT_TOPICS
    window_s: int = Field(default=60, gt=0)
    allowed_lateness_s: float = Field(default=10.0, ge=0)
    # Emitted windows are kept (for late events, re-emitted as revision + 1, and for the reward-drop
    # comparison) until they have been unchanged for this long of wall-clock time.
    retention_s: float = Field(default=3600.0, gt=0)
    emit_interval_s: float = Field(default=1.0, gt=0)
    # A reward whose decision has not been seen is held this long, then counted as unattributed.
    reward_hold_s: float = Field(default=30.0, ge=0)
    # request_id -> model_version entries are forgotten after this long.
    request_ttl_s: float = Field(default=3600.0, gt=0)
    partitions: int = Field(default=2, ge=1)
    web_port: int = Field(default=6066, ge=1, le=65535)
    data_dir: Path = Path(".streamrl/monitor")
    min_propensity: float = Field(default=0.01, ge=0, le=1)
    # Continuous decisions logged with a smaller log density raise a low_density alert. Off by
    # default: a density has the inverse units of the action box, so no one threshold fits every
    # model (a uniform policy over [-2, 2] has log density -1.39; over [-2, 2]^6, -8.3).
    min_log_density: float | None = None
    max_reward_drop: float = Field(default=0.5, gt=0)
    reward_metrics: dict[str, float] | None = Field(
        default=None,
        description="the app's reward as Σ weight × metric (`contracts.reward_value`); None: `reward`",
    )
    loglevel: Literal["debug", "info", "warning", "error"] = "warning"

    @model_validator(mode="after")
    def _retention_covers_windows(self) -> MonitoringConfig:
        if self.retention_s < self.window_s + self.allowed_lateness_s:
            raise ValueError(
                f"retention_s={self.retention_s} must be at least window_s + allowed_lateness_s "
                f"({self.window_s + self.allowed_lateness_s}); otherwise the previous window is gone "
                "before the next one closes and reward-drop alerts never fire"
            )
        return self
