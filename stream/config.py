"""Configuration of the timeline job (the `stream` section of an environment's YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamConfig(BaseModel):
    """Where the timeline job writes and how it attributes rewards and closes MDPs.

    Time windows: a reward is attributed to a decision when its timestamp is at most
    `attribution_window_s` after the decision's. An MDP is closed (emitted as timeline rows) once
    `attribution_window_s + mdp_idle_timeout_s` of processing time has passed since its last
    decision arrived; decisions arriving for it afterwards are dead-lettered as late.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    output_dir: Path
    checkpoint_dir: Path
    attribution_window_s: float = Field(default=3600.0, gt=0)
    mdp_idle_timeout_s: float = Field(default=1800.0, gt=0)
    trigger_interval_s: float = Field(
        default=2.0, gt=0, description="how often a micro-batch starts (when the last one is done)"
    )
    max_rows_per_batch: int | None = Field(default=None, gt=0)
    max_mdp_length: int | None = Field(
        default=None, gt=0, description="MDPs with more steps are outliers and are not emitted"
    )
    reward_metrics: dict[str, float] | None = Field(
        default=None,
        description="the reward as Σ weight × metric of each reward event (an app manifest's `reward.metrics`); "
        "None: the events' own `reward`",
    )
    closed_mdp_retention_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="how long closed MDP ids are remembered to dead-letter late decisions",
    )
    max_closed_mdps: int | None = Field(
        default=5_000_000,
        gt=0,
        description="at most this many closed MDP ids are remembered (the most recently closed); bounds the "
        "state carried between batches. A decision for a forgotten MDP opens a new one. None: no cap",
    )

    @property
    def attribution_window_ms(self) -> int:
        return round(self.attribution_window_s * 1000)

    @property
    def close_after_ms(self) -> int:
        """Processing time after an MDP's last decision arrival before it is closed."""
        return round((self.attribution_window_s + self.mdp_idle_timeout_s) * 1000)
