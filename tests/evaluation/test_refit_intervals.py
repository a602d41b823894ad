"""Intervals that refit the models: the refit is the point fit at unit counts, a weighted fit is a fit
on duplicated rows, and with a correct reward model and correct propensities the intervals cover the
exact truth at the nominal rate (within binomial error computed here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation import EvaluationConfig, evaluate_probabilities
from evaluation.fqe import RidgeFqeConfig, fitted_q_evaluation
from evaluation.joint_models import JointDesign, cross_fit_joint_reward_model, joint_fitted_q_evaluation
from evaluation.refit import LinearDesign, refit_predictions
from evaluation.reward_model import (
    RidgeRewardModelConfig,
    cross_fit_reward_model,
    fit_ridge,
    fold_of_episode,
)
from features import fit_normalization, frame_from_feature_maps


def _episodes(n_episodes: int, max_length: int, rng: np.random.Generator) -> np.ndarray:
    return np.repeat(np.arange(n_episodes), rng.integers(1, max_length + 1, n_episodes))


def test_refit_at_unit_counts_is_the_point_fit_per_action() -> None:
    rng = np.random.default_rng(0)
    ep = _episodes(150, 5, rng)
    n = ep.size
    x = rng.normal(size=(n, 3))
    a = rng.integers(0, 2, n)
    a[[0, 7, 40]] = 2  # action 2 has 3 rows: below min_rows_per_action, it borrows the pooled fit
    pi = rng.dirichlet(np.ones(3), n)
    r = x[:, 0] - 0.5 * a + rng.normal(size=n)
    reward_config, fqe_config = RidgeRewardModelConfig(l2=0.7), RidgeFqeConfig(l2=2.0, iterations=7)
    reward_fit = cross_fit_reward_model(x, a, r, ep, ["a", "b", "c"], reward_config, seed=5)
    fqe = fitted_q_evaluation(x, ep, a, r, pi, 0.8, fqe_config, 5)

    refit = refit_predictions(
        LinearDesign.per_action(x, a, pi, ep, r),
        np.ones((2, ep.max() + 1)),
        0.8,
        reward_config,
        fqe_config,
        5,
    )
    rows = np.arange(n)
    for s in range(2):
        np.testing.assert_allclose(refit.reward_logged[s], reward_fit.q_hat[rows, a], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(refit.reward_target[s], np.sum(pi * reward_fit.q_hat, axis=1), atol=1e-9)
        np.testing.assert_allclose(refit.q_logged[s], fqe.q_hat[rows, a], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(refit.v_target[s], np.sum(pi * fqe.q_hat, axis=1), rtol=1e-7, atol=1e-9)


def test_refit_at_unit_counts_is_the_point_fit_joint() -> None:
    rng = np.random.default_rng(1)
    ep = _episodes(120, 4, rng)
    n = ep.size
    logged, target = rng.normal(size=(n, 6)), rng.normal(size=(n, 6))
    r = logged[:, 1] + rng.normal(size=n)
    design = JointDesign(logged=logged, target=target)
    reward_config, fqe_config = RidgeRewardModelConfig(), RidgeFqeConfig()
    q_reward, _ = cross_fit_joint_reward_model(design, r, ep, reward_config, 2)
    q_long, _ = joint_fitted_q_evaluation(design, ep, r, 0.9, fqe_config, 2)

    refit = refit_predictions(
        LinearDesign.joint(logged, target, ep, r),
        np.ones((1, ep.max() + 1)),
        0.9,
        reward_config,
        fqe_config,
        2,
    )
    np.testing.assert_allclose(refit.reward_logged[0], q_reward.logged, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(refit.reward_target[0], q_reward.target, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(refit.q_logged[0], q_long.logged, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(refit.v_target[0], q_long.target, rtol=1e-7, atol=1e-9)


def test_a_resample_refits_as_if_its_episodes_were_duplicated() -> None:
    """Counts 0/1/2 per episode: each fold's model is ridge on the other folds' rows repeated that often."""
    rng = np.random.default_rng(2)
    ep = _episodes(80, 3, rng)
    n = ep.size
    x = rng.normal(size=(n, 2))
    a = rng.integers(0, 2, n)
    r = 1.0 + x @ np.array([0.5, -1.0]) + 0.3 * a + rng.normal(size=n)
    pi = np.full((n, 2), 0.5)
    counts = rng.integers(0, 3, ep.max() + 1).astype(float)
    config = RidgeRewardModelConfig(l2=1.5)
    refit = refit_predictions(
        LinearDesign.per_action(x, a, pi, ep, r), counts[None, :], 0.9, config, RidgeFqeConfig(), 9
    )

    fold = fold_of_episode(ep, config.folds, 9)
    repeat = counts[ep].astype(int)
    for k in range(config.folds):
        test = fold == k
        for action in (0, 1):
            train = (fold != k) & (a == action)
            beta, intercept = fit_ridge(
                np.repeat(x[train], repeat[train], axis=0), np.repeat(r[train], repeat[train]), 1.5
            )
            rows = test & (a == action)
            np.testing.assert_allclose(
                refit.reward_logged[0, rows], x[rows] @ beta + intercept, rtol=1e-8, atol=1e-9
            )


def _bandit(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One-step decisions: x ~ N(0, I₂), μ = (0.5, 0.5), r = c_a + β_a·x + N(0, 1): the ridge heads are
    correctly specified. The target π = (0.8, 0.2) does not depend on x, so its value is exactly
    0.8·c_0 + 0.2·c_1 (E x = 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    a = rng.integers(0, 2, n)
    c = np.array([1.0, 2.0])
    beta = np.array([[1.0, -0.5], [0.3, 1.2]])
    r = c[a] + np.sum(beta[a] * x, axis=1) + rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "mdp_id": [f"u{i:05d}" for i in range(n)],
            "sequence_number_ordinal": 1,
            "state_features": [{"x0": float(u), "x1": float(v)} for u, v in x],
            "action": np.where(a == 1, "b", "a"),
            "action_probability": 0.5,
            "possible_actions": [["a", "b"]] * n,
            "reward": r,
            "model_version": "uniform",
        }
    )
    return frame, np.tile([0.8, 0.2], (n, 1))


TRUTH = 0.8 * 1.0 + 0.2 * 2.0


def test_intervals_cover_the_truth_at_the_nominal_rate_with_a_correct_model() -> None:
    seeds = 60
    config = EvaluationConfig(gamma=0.0, bootstrap_samples=100, min_rows=1, holdout_fraction=0.0)
    covered = {"dm": 0, "ips": 0, "dr": 0, "sndr": 0}
    for seed in range(seeds):
        frame, target = _bandit(400, seed)
        spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
        report = evaluate_probabilities(
            frame, target, ["a", "b"], "target", config.model_copy(update={"seed": seed}), spec
        )
        assert report.problem == "one_step" and report.headline == "dr"
        for name in covered:
            e = report.estimates[name]
            covered[name] += int(e.ci_low <= TRUTH <= e.ci_high)
    # Coverage counts ~ Binomial(seeds, 0.95): a 99.9 % band for each of the four.
    low, high = stats.binom.ppf([0.0005, 0.9995], seeds, 0.95)
    for name, count in covered.items():
        assert low <= count <= high, (name, count, (low, high))


def test_dm_refit_interval_is_as_wide_as_its_spread_across_seeds() -> None:
    """DM's spread across seeds is mostly the fitted model's; its refit interval is as wide as that
    spread, while the rows alone (model held fixed) vary far less."""
    config = EvaluationConfig(gamma=0.0, bootstrap_samples=100, min_rows=1)
    values, widths = [], []
    for seed in range(25):
        frame, target = _bandit(400, 100 + seed)
        spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
        dm = evaluate_probabilities(frame, target, ["a", "b"], "target", config, spec).estimates["dm"]
        values.append(dm.value)
        widths.append(dm.ci_high - dm.ci_low)
    spread = 2 * 1.96 * np.std(values, ddof=1)
    # The 95 % interval of a normal estimator is 3.92 sd wide: the mean width matches the seeds' spread.
    assert np.mean(widths) == pytest.approx(spread, rel=0.35)
