"""The DQN training config: one validated record, stored verbatim in the model's metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DqnConfig(BaseModel):
    """Hyper-parameters of off-policy DQN on logged timelines.

    `softmax_temperature` is baked into the ONNX `action_probabilities` output;
    the distribution actually served is `trainer.policy.action_distribution` over
    `q_values` with the model's exploration config.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    type: Literal["dqn"] = "dqn"
    gamma: float = Field(0.9, ge=0.0, le=1.0)
    n_step: int = Field(
        1,
        ge=1,
        description="bootstrap after n logged steps: r_t + … + γ^(n−1) r_(t+n−1) + γ^n max Q(s_(t+n))",
    )
    double_q: bool = True
    dueling: bool = True
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64])
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(128, ge=1)
    num_epochs: int = Field(20, ge=1)
    target_update_tau: float = Field(0.05, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    softmax_temperature: float = Field(1.0, gt=0.0)
    reward_clip: float | None = Field(None, gt=0.0, description="clip rewards to [-c, c]; None = no clipping")
    device: Literal["cpu", "cuda"] = Field("cpu", description="cuda trains on GPU (NCCL when distributed)")
    num_threads: int = Field(
        1, ge=1, description="torch intra-op threads while training (small MLPs: 1 is fastest)"
    )

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"hidden_sizes must all be >= 1, got {value}")
        return value
