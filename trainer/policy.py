"""How a model's Q-values become the action distribution that is actually served.

Serving samples from this distribution and logs the chosen action's probability;
evaluation scores the model *as served* with the same function. Keeping one
implementation is what makes the logged propensities and the CPE estimate agree.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Exploration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GreedyExploration(_Exploration):
    """Always the best possible action (no exploration): propensities are 0/1."""

    type: Literal["greedy"] = "greedy"


class EpsilonGreedyExploration(_Exploration):
    """Best action with probability 1-ε, otherwise uniform over the possible actions."""

    type: Literal["epsilon_greedy"] = "epsilon_greedy"
    epsilon: float = Field(0.05, ge=0.0, le=1.0)


class SoftmaxExploration(_Exploration):
    """Softmax of Q/temperature over possible actions, mixed with ε-uniform."""

    type: Literal["softmax"] = "softmax"
    temperature: float = Field(1.0, gt=0.0)
    epsilon: float = Field(0.0, ge=0.0, le=1.0)


ExplorationConfig = Annotated[
    GreedyExploration | EpsilonGreedyExploration | SoftmaxExploration,
    Field(discriminator="type"),
]


def action_distribution(
    q_values: np.ndarray, possible_mask: np.ndarray, exploration: ExplorationConfig
) -> np.ndarray:
    """Return the served probability of each action, shape [B, A], rows summing to 1.

    `possible_mask` is [B, A] with 1 for a possible action; impossible actions get 0.
    Ties in the greedy action are broken towards the lowest index (as argmax does), so
    propensities are reproducible. A row whose possible actions do not all have finite
    Q-values has no distribution: it comes back as NaN, which callers refuse (serving
    answers that request with `ModelOutputError` instead of choosing an action).
    """
    q = np.asarray(q_values, dtype=np.float64)
    mask = np.asarray(possible_mask, dtype=bool)
    if q.shape != mask.shape or q.ndim != 2:
        raise ValueError(f"q_values {q.shape} and possible_mask {mask.shape} must both be [batch, actions]")
    if not mask.any(axis=1).all():
        raise ValueError("every row needs at least one possible action")
    n_possible = mask.sum(axis=1, keepdims=True)
    uniform = mask / n_possible
    broken = ~np.all(np.isfinite(q) | ~mask, axis=1)
    masked_q = np.where(mask & ~broken[:, None], q, np.where(mask, 0.0, -np.inf))
    if isinstance(exploration, SoftmaxExploration):
        z = masked_q / exploration.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.where(mask, np.exp(z), 0.0)
        base = e / e.sum(axis=1, keepdims=True)
        eps = exploration.epsilon
    else:
        best = masked_q.argmax(axis=1)
        base = np.zeros_like(q)
        base[np.arange(q.shape[0]), best] = 1.0
        eps = exploration.epsilon if isinstance(exploration, EpsilonGreedyExploration) else 0.0
    distribution = (1.0 - eps) * base + eps * uniform
    distribution[broken] = np.nan
    return distribution
