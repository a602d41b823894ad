"""Conservative Q-learning (Kumar et al. 2020), the offline-safe member of the DQN family.

CQL is DQN's loop (`trainer.dqn.train_dqn`) with one more term per row:
α·(logsumexp over possible actions of Q(s, ·) − Q(s, a_logged)). It pushes down Q of actions the
logs never tried, so the greedy policy stays on the support of the data instead of chasing an
over-estimated, untested action.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from trainer.config import DqnConfig


class CqlConfig(DqnConfig):
    """DQN's hyper-parameters plus the weight of the conservative penalty."""

    type: Literal["cql"] = "cql"  # type: ignore[assignment]
    cql_alpha: float = Field(1.0, ge=0.0, description="weight of logsumexp_a Q(s, a) − Q(s, a_logged)")


def conservative_penalty(
    q_all: torch.Tensor, actions: torch.Tensor, possible_mask: torch.Tensor
) -> torch.Tensor:
    """Per row: logsumexp of Q over the possible actions minus Q of the logged action (≥ 0)."""
    masked = torch.where(possible_mask > 0.5, q_all, torch.full_like(q_all, -math.inf))
    return torch.logsumexp(masked, dim=1) - q_all.gather(1, actions[:, None]).squeeze(1)
