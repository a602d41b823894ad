"""Continuous-action CPE accuracy where the truth is exact: a contextual bandit with Gaussian policies.

Context x ~ N(0, I₂); a 1-D action; reward r = −(a − θᵀx)² + ε, ε ~ N(0, 0.5²), θ = (1, −0.5).
- logging policy μ: a ~ N(0.5·θᵀx, 1): a weak version of the rule, explored widely;
- target policy π: a ~ N(0.6·θᵀx + 0.4, 0.2²): near-deterministic, offset from the logging mean.
The truth is analytic: E[r] = −E[(0.4 − 0.4·θᵀx)²] − 0.2² = −(0.16 + 0.16·|θ|² + 0.04) = −0.4
(checked against 10⁶ Monte-Carlo draws). A second reward, r = 3·exp(−(a − θᵀx)²) + ε, puts the
reward model out of its quadratic class (truth by 10⁶ draws), so the table shows what the kernel
weights must correct. Every estimate goes through `evaluation.evaluate_action_samples` (bandwidth
rule, kernel weights, cross-fitted joint reward model, bootstrap) with M = 32 draws of π per decision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from contracts.actions import ACTION_LOG_DENSITY_COLUMN, ACTION_VECTOR_COLUMN
from evaluation import EvaluationConfig, KernelConfig, evaluate_action_samples
from features import fit_normalization, frame_from_feature_maps

THETA = np.array([1.0, -0.5])
LOGGING_SLOPE, LOGGING_STD = 0.5, 1.0
TARGET_SLOPE, TARGET_OFFSET, TARGET_STD = 0.6, 0.4, 0.2
REWARD_NOISE = 0.5
TARGET_DRAWS = 32
HEADLINE = "kernel_dr"
ESTIMATORS = ("dm", "kernel_ips", "kernel_snips", "kernel_dr", "kernel_sndr")
Reward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def quadratic_reward(a: np.ndarray, rule: np.ndarray) -> np.ndarray:
    return -((a - rule) ** 2)


def bump_reward(a: np.ndarray, rule: np.ndarray) -> np.ndarray:
    return 3.0 * np.exp(-((a - rule) ** 2))


REWARDS: dict[str, Reward] = {"quadratic": quadratic_reward, "bump": bump_reward}


def analytic_truth() -> float:
    """−E[(TARGET_OFFSET + (TARGET_SLOPE − 1)·θᵀx)²] − TARGET_STD² with θᵀx ~ N(0, |θ|²)."""
    slope_gap = (TARGET_SLOPE - 1.0) ** 2 * float(THETA @ THETA)
    return -(TARGET_OFFSET**2 + slope_gap + TARGET_STD**2)


def monte_carlo_truth(reward: Reward, draws: int = 1_000_000, seed: int = 12_345) -> float:
    rng = np.random.default_rng(seed)
    rule = rng.standard_normal((draws, 2)) @ THETA
    a = TARGET_SLOPE * rule + TARGET_OFFSET + TARGET_STD * rng.standard_normal(draws)
    return float(np.mean(reward(a, rule)))


def logged_timelines(n: int, seed: int, reward: Reward) -> tuple[pd.DataFrame, np.ndarray]:
    """(one-step continuous-action timelines logged under μ, target draws [TARGET_DRAWS, n, 1])."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    rule = x @ THETA
    mean = LOGGING_SLOPE * rule
    a = mean + LOGGING_STD * rng.standard_normal(n)
    log_density = -0.5 * ((a - mean) / LOGGING_STD) ** 2 - np.log(LOGGING_STD) - 0.5 * np.log(2.0 * np.pi)
    r = reward(a, rule) + REWARD_NOISE * rng.standard_normal(n)
    frame = pd.DataFrame(
        {
            "mdp_id": [f"s{seed}-{i:06d}" for i in range(n)],
            "sequence_number_ordinal": np.ones(n, dtype=np.int64),
            "state_features": [{"x0": float(u), "x1": float(v)} for u, v in x],
            ACTION_VECTOR_COLUMN: [[float(v)] for v in a],
            ACTION_LOG_DENSITY_COLUMN: log_density,
            "action": None,
            "action_probability": None,
            "reward": r,
            "possible_actions": [["a0"]] * n,
            "model_version": "gaussian-logging",
        }
    )
    target_mean = TARGET_SLOPE * rule + TARGET_OFFSET
    draws = target_mean[None, :, None] + TARGET_STD * rng.standard_normal((TARGET_DRAWS, n, 1))
    return frame, draws


def continuous_errors(
    seeds: int, n: int, reward_name: str = "quadratic", kernel: KernelConfig | None = None
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(relative error per estimator over seeds, mean bandwidth / ESS / truth) on one reward."""
    reward = REWARDS[reward_name]
    truth = analytic_truth() if reward_name == "quadratic" else monte_carlo_truth(reward)
    config = EvaluationConfig(
        gamma=1.0,
        bootstrap_samples=50,
        min_rows=1,
        kernel=kernel or KernelConfig(target_samples=TARGET_DRAWS),
    )
    errors: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    bandwidths, ess = [], []
    for seed in range(seeds):
        frame, draws = logged_timelines(n, seed, reward)
        spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
        report = evaluate_action_samples(frame, draws, "target", config, spec, ["a0"])
        for name in ESTIMATORS:
            errors[name].append((report.estimates[name].value - truth) / abs(truth))
        bandwidths.append(report.kernel.bandwidth[0])
        ess.append(report.kernel.effective_sample_size)
    return errors, {"truth": truth, "bandwidth": float(np.mean(bandwidths)), "ess": float(np.mean(ess))}


def relative_rmse(errors: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))
