"""q̂(x, a): a model of the immediate reward, cross-fitted so DR is not fooled by overfitting.

Ridge regression with one head per action on normalized features (`features.normalize`:
values plus presence mask), solved in closed form: tens of thousands of rows fit in
milliseconds. With K-fold cross-fitting, each row's q̂ comes from the model trained on the
other folds; folds are assigned per episode so steps of one MDP never straddle train and test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RidgeRewardModelConfig(BaseModel):
    """Per-action ridge regression; `l2` penalizes the slopes, not the intercept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ridge"] = "ridge"
    l2: float = Field(1.0, ge=0.0)
    folds: int = Field(2, ge=2, le=10)
    # An action with fewer training rows than this borrows strength from the pooled fit.
    min_rows_per_action: int = Field(5, ge=1)


class RewardModelFit(BaseModel):
    """Held-out quality of q̂ on the logged actions (every prediction is out-of-fold)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    model_type: str
    folds: int
    n_rows: int
    rmse: float
    r2: float = Field(description="1 − SSE/SST on held-out predictions; ≤ 0 means no better than the mean")
    rows_per_action: dict[str, int]


@dataclass(frozen=True, slots=True)
class CrossFitResult:
    """q̂ for every row and action [N, A], plus how well it predicted held-out rewards."""

    q_hat: np.ndarray
    fit: RewardModelFit


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Slopes and intercept of ridge regression with an unpenalized intercept (centred solve)."""
    x_mean = x.mean(axis=0)
    y_mean = float(y.mean())
    xc = x - x_mean
    gram = xc.T @ xc + l2 * np.eye(x.shape[1])
    beta = np.linalg.lstsq(gram, xc.T @ (y - y_mean), rcond=None)[0]
    return beta, y_mean - float(x_mean @ beta)


def fit_action_heads(
    x: np.ndarray, action: np.ndarray, y: np.ndarray, n_actions: int, config: RidgeRewardModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """[F, A] slopes and [A] intercepts; sparse actions fall back to the pooled (all-action) fit."""
    pooled_beta, pooled_intercept = fit_ridge(x, y, config.l2)
    betas = np.tile(pooled_beta[:, None], (1, n_actions))
    intercepts = np.full(n_actions, pooled_intercept)
    for a in range(n_actions):
        rows = action == a
        if rows.sum() >= config.min_rows_per_action:
            betas[:, a], intercepts[a] = fit_ridge(x[rows], y[rows], config.l2)
    return betas, intercepts


def fold_of_episode(episode_index: np.ndarray, folds: int, seed: int) -> np.ndarray:
    n_episodes = int(episode_index.max()) + 1
    assignment = np.random.default_rng(seed).permutation(n_episodes) % folds
    return assignment[episode_index]


def cross_fit_reward_model(
    features: np.ndarray,
    logged_action: np.ndarray,
    reward: np.ndarray,
    episode_index: np.ndarray,
    actions: list[str],
    config: RidgeRewardModelConfig,
    seed: int = 0,
) -> CrossFitResult:
    """Cross-fitted q̂ [N, A] of the immediate reward from normalized features [N, D].

    With fewer episodes than folds there is nothing to hold out: every row is then predicted
    by the mean reward (RMSE/R² still reported, R² = 0) rather than by a model that saw it.
    """
    x = np.asarray(features, dtype=np.float64)
    a = np.asarray(logged_action, dtype=np.int64)
    y = np.asarray(reward, dtype=np.float64)
    n, n_actions = x.shape[0], len(actions)
    q_hat = np.empty((n, n_actions), dtype=np.float64)
    n_episodes = int(np.asarray(episode_index).max()) + 1 if n else 0
    if n_episodes < config.folds:
        q_hat[:] = y.mean() if n else math.nan
    else:
        fold = fold_of_episode(np.asarray(episode_index, dtype=np.int64), config.folds, seed)
        for k in range(config.folds):
            test = fold == k
            betas, intercepts = fit_action_heads(x[~test], a[~test], y[~test], n_actions, config)
            q_hat[test] = x[test] @ betas + intercepts
    predicted = q_hat[np.arange(n), a]
    sse = float(np.sum((y - predicted) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    counts = np.bincount(a, minlength=n_actions)
    fit = RewardModelFit(
        model_type=config.type,
        folds=config.folds,
        n_rows=n,
        rmse=math.sqrt(sse / n) if n else math.nan,
        r2=1.0 - sse / sst if sst > 0 else (0.0 if sse == 0 else -math.inf),
        rows_per_action={name: int(c) for name, c in zip(actions, counts, strict=True)},
    )
    return CrossFitResult(q_hat=q_hat, fit=fit)
