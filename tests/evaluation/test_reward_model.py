"""Cross-fitted reward model: accurate where the signal is linear, honest (no in-sample fit) on noise, fast."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import RidgeRewardModelConfig, cross_fit_reward_model


def _linear_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    action = rng.integers(0, 3, n)
    slopes = np.array([[1.0, -1.0, 0.0], [0.5, 0.0, 0.2], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    truth = x @ slopes + np.array([0.0, 1.0, 2.0])
    reward = truth[np.arange(n), action] + rng.normal(0, 0.1, n)
    return x, action, reward, truth


def test_cross_fitted_predictions_match_a_linear_truth() -> None:
    x, action, reward, truth = _linear_data(20_000, seed=0)
    result = cross_fit_reward_model(
        x, action, reward, np.arange(20_000), ["a", "b", "c"], RidgeRewardModelConfig()
    )
    assert result.q_hat.shape == (20_000, 3)
    np.testing.assert_allclose(result.q_hat, truth, atol=0.05)  # all actions, not only the logged one
    assert result.fit.rmse == pytest.approx(0.1, abs=0.01)
    assert result.fit.r2 > 0.95
    assert sum(result.fit.rows_per_action.values()) == 20_000


def test_cross_fitting_does_not_reward_memorizing_noise() -> None:
    # 200 rows, 150 noise features: an in-sample fit explains most of the noise; held-out cannot.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 150))
    reward = rng.normal(size=200)
    action = np.zeros(200, dtype=np.int64)
    result = cross_fit_reward_model(
        x, action, reward, np.arange(200), ["only"], RidgeRewardModelConfig(l2=1e-3)
    )
    assert result.fit.r2 < 0.0


def test_folds_are_assigned_per_episode() -> None:
    # Each episode's rows share one reward drawn per episode; if an episode straddled folds, its
    # other rows would leak the answer. With an indicator feature per episode and per-episode folds,
    # held-out predictions cannot recover the episode's reward.
    rng = np.random.default_rng(2)
    episodes = np.repeat(np.arange(100), 4)
    x = np.eye(100)[episodes]
    reward = rng.normal(size=100)[episodes]
    result = cross_fit_reward_model(
        x, np.zeros(400, dtype=np.int64), reward, episodes, ["only"], RidgeRewardModelConfig(l2=1e-3)
    )
    assert result.fit.r2 < 0.05


def test_sparse_action_falls_back_to_pooled_fit() -> None:
    x, action, reward, _ = _linear_data(2_000, seed=3)
    action[action == 2] = 0  # action "c" is never logged
    result = cross_fit_reward_model(
        x, action, reward, np.arange(2_000), ["a", "b", "c"], RidgeRewardModelConfig()
    )
    assert result.fit.rows_per_action["c"] == 0
    assert np.all(np.isfinite(result.q_hat[:, 2]))
