"""Fitted Q evaluation (Le et al. 2019): the model-based baseline, and the long-term q̂ of the
sequential doubly robust estimators.

Q_{k+1}(x, a) ← ridge regression of r + γ Σ_a' π(a'|x') Q_k(x', a') on (x, a), where x' is the
next row of the same episode (no bootstrap term on an episode's last row). Cross-fitted like
the reward model: folds are whole episodes, and each row's Q comes from the model that never
saw its episode, so DR built on it is not fooled by overfitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.reward_model import RidgeRewardModelConfig, fit_action_heads, fold_of_episode


class RidgeFqeConfig(BaseModel):
    """Per-action ridge Q-function iterated `iterations` times (capped at the longest episode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ridge_fqe"] = "ridge_fqe"
    iterations: int = Field(30, ge=1, le=1000)
    l2: float = Field(1.0, ge=0.0)
    folds: int = Field(2, ge=2, le=10)
    min_rows_per_action: int = Field(5, ge=1)


class FqeFit(BaseModel):
    """Held-out quality of the fitted Q: the Bellman (TD) error on rows of unseen episodes."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    model_type: str
    folds: int
    iterations: int
    n_rows: int
    bellman_rmse: float = Field(description="RMS of r + γ v̂(x') − Q(x, a) on held-out rows")


@dataclass(frozen=True, slots=True)
class FqeResult:
    """Cross-fitted Q^π [N, A] for every row and action, and its held-out Bellman error."""

    q_hat: np.ndarray
    fit: FqeFit


def fitted_q_evaluation(
    features: np.ndarray,
    episode_index: np.ndarray,
    logged_action: np.ndarray,
    reward: np.ndarray,
    target_probs: np.ndarray,
    gamma: float,
    config: RidgeFqeConfig,
    seed: int = 0,
) -> FqeResult:
    """Q^π of the target policy on every row, cross-fitted by episode; rows sorted by (episode, step)."""
    x = np.asarray(features, dtype=np.float64)
    ep = np.asarray(episode_index, dtype=np.int64)
    a = np.asarray(logged_action, dtype=np.int64)
    r = np.asarray(reward, dtype=np.float64)
    pi = np.asarray(target_probs, dtype=np.float64)
    n, n_actions = pi.shape
    has_next = np.r_[ep[1:] == ep[:-1], False]
    nxt = np.minimum(np.arange(n) + 1, n - 1)
    lengths = np.bincount(ep)
    iterations = int(min(config.iterations, lengths.max()))
    heads = RidgeRewardModelConfig(l2=config.l2, min_rows_per_action=config.min_rows_per_action)

    def backup_target(q: np.ndarray) -> np.ndarray:
        v_next = np.sum(pi[nxt] * q[nxt], axis=1)
        return r + gamma * np.where(has_next, v_next, 0.0)

    q_hat = np.empty((n, n_actions), dtype=np.float64)
    n_episodes = int(ep.max()) + 1
    if n_episodes < config.folds:
        q_hat[:] = float(r.mean()) / (1.0 - gamma) if gamma < 1.0 else float(r.mean())
    else:
        fold = fold_of_episode(ep, config.folds, seed)
        for k in range(config.folds):
            train = fold != k
            q = np.zeros((n, n_actions))
            for _ in range(iterations):
                betas, intercepts = fit_action_heads(
                    x[train], a[train], backup_target(q)[train], n_actions, heads
                )
                q = x @ betas + intercepts
            q_hat[~train] = q[~train]
    td = backup_target(q_hat) - q_hat[np.arange(n), a]
    fit = FqeFit(
        model_type=config.type,
        folds=config.folds,
        iterations=iterations,
        n_rows=n,
        bellman_rmse=math.sqrt(float(np.mean(td**2))) if n else math.nan,
    )
    return FqeResult(q_hat=q_hat, fit=fit)
