"""The interval an unreliable headline reports (`truncated_is_interval`) and the small-sample widening
of every bootstrap interval (`small_sample_factor`): known answers, coverage against exact truths
over seeded trials (binomial floor from scipy), and the report that uses them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evaluation.bounds import truncated_is_interval
from evaluation.errors import EvaluationError
from evaluation.scoring import small_sample_factor

# A tiny episodic task whose value has a closed form. Each step the policy draws an action with
# fixed probabilities; action a pays REWARD_HIGH with probability P_HIGH[a], else REWARD_LOW, and ends
# the episode with probability END[a]; every episode ends after HORIZON steps at most.
HORIZON = 4
GAMMA = 0.9
REWARD_LOW, REWARD_HIGH = -1.0, 2.0
P_HIGH = np.array([0.2, 0.7])
END = np.array([0.1, 0.5])


def exact_value(policy: np.ndarray) -> float:
    """Σ_{t<H} γ^t · P(alive at t) · E_π[r]: the policy's choices are independent of the state."""
    expected_reward = float(policy @ (P_HIGH * REWARD_HIGH + (1 - P_HIGH) * REWARD_LOW))
    survive = float(policy @ (1 - END))
    return sum(GAMMA**t * survive**t * expected_reward for t in range(HORIZON))


def simulate(
    logging: np.ndarray, target: np.ndarray, episodes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(episode index, per-decision weight π/μ, reward) of `episodes` episodes logged under `logging`."""
    ep, w, r = [], [], []
    for e in range(episodes):
        for _ in range(HORIZON):
            a = int(rng.random() < logging[1])
            ep.append(e)
            w.append(target[a] / logging[a])
            r.append(REWARD_HIGH if rng.random() < P_HIGH[a] else REWARD_LOW)
            if rng.random() < END[a]:
                break
    return np.array(ep), np.array(w), np.array(r)


def test_the_closed_form_value_matches_a_direct_simulation() -> None:
    # The test's own truth, checked by on-policy Monte Carlo (no weights involved).
    target = np.array([0.2, 0.8])
    ep, _, r = simulate(target, target, 40_000, np.random.default_rng(1))
    starts = np.flatnonzero(np.r_[True, np.diff(ep) > 0])
    step = np.arange(ep.size) - np.repeat(starts, np.diff(np.r_[starts, ep.size]))
    returns = np.bincount(ep, weights=GAMMA**step * r)
    error = returns.std(ddof=1) / np.sqrt(returns.size)
    assert abs(returns.mean() - exact_value(target)) < 4 * error


def test_the_padded_terms_center_on_the_value_with_rewards_of_both_signs() -> None:
    # With rewards in [−1, 2], the padding of ended episodes carries (0 − a) on the lower side and b
    # on the upper: dropping it would shift either bound by up to 2 · Σγ^t · P(ended) ≈ 1.4.
    logging, target = np.array([0.5, 0.5]), np.array([0.2, 0.8])
    ep, w, r = simulate(logging, target, 60_000, np.random.default_rng(2))
    low, high = truncated_is_interval(ep, w, r, GAMMA, 0.95, (REWARD_LOW, REWARD_HIGH))
    truth = exact_value(target)
    assert low <= truth <= high
    assert high - low < 0.25, (low, high)


def test_covers_the_exact_value_at_least_at_the_nominal_rate() -> None:
    logging, target = np.array([0.7, 0.3]), np.array([0.1, 0.9])
    truth = exact_value(target)
    trials, covered = 120, 0
    rng = np.random.default_rng(3)
    for _ in range(trials):
        ep, w, r = simulate(logging, target, 300, rng)
        low, high = truncated_is_interval(ep, w, r, GAMMA, 0.95, (REWARD_LOW, REWARD_HIGH))
        covered += low <= truth <= high
    # A 95 % guarantee: fewer covered than binomial's 0.1 % quantile would refute it.
    assert covered >= stats.binom.ppf(0.001, trials, 0.95)


def test_heavy_weights_that_break_the_bootstrap_do_not_break_it() -> None:
    # One decision per episode; the logging policy almost never takes the action the target takes
    # half the time, so 0.5 % of the decisions carry weight 100 and the rest 0.5025: in 22 % of the
    # seeds (e^−1.5) none of the 300 is heavy, the bootstrap sees a value near 0.05, not 0.5, and misses.
    logging, target = np.array([0.995, 0.005]), np.array([0.5, 0.5])
    p = np.array([0.1, 0.9])
    truth = float(target @ p)
    rng = np.random.default_rng(4)
    trials, covered, boot_covered = 150, 0, 0
    for _ in range(trials):
        a = (rng.random(300) < logging[1]).astype(int)
        r = (rng.random(300) < p[a]).astype(float)
        w = target[a] / logging[a]
        low, high = truncated_is_interval(np.arange(300), w, r, 1.0, 0.95, (0.0, 1.0))
        covered += low <= truth <= high
        resampled = (w * r)[rng.integers(0, 300, (400, 300))].mean(axis=1)
        b_low, b_high = np.quantile(resampled, [0.025, 0.975])
        boot_covered += b_low <= truth <= b_high
    assert covered >= stats.binom.ppf(0.001, trials, 0.95)
    assert boot_covered < stats.binom.ppf(0.001, trials, 0.95), "the case should break the bootstrap"


def test_constant_zero_rewards_give_the_point_zero() -> None:
    assert truncated_is_interval(np.array([0, 0, 1]), np.ones(3), np.zeros(3), 0.9, 0.95, (0.0, 0.0)) == (
        0.0,
        0.0,
    )


def test_a_reward_outside_the_declared_range_is_named() -> None:
    with pytest.raises(
        EvaluationError,
        match=r"1 rewards lie outside the reward range \[0.0, 1.0\], first at rows \[2\] with values \[3.0\]",
    ):
        truncated_is_interval(
            np.array([0, 0, 1]), np.ones(3), np.array([0.0, 1.0, 3.0]), 0.9, 0.95, (0.0, 1.0)
        )


def test_small_sample_factor_known_answers() -> None:
    # Student t tables: t_{0.975, 29} = 2.04523, t_{0.975, 99} = 1.98422; z_{0.975} = 1.95996.
    assert small_sample_factor(30.0, 1000, 0.95) == pytest.approx(2.04523 / 1.95996, rel=1e-5)
    assert small_sample_factor(None, 100, 0.95) == pytest.approx(1.98422 / 1.95996, rel=1e-5)
    assert small_sample_factor(1.0, 1000, 0.95) == 1.0
    assert small_sample_factor(1e9, 10, 0.95) == pytest.approx(1.0, abs=1e-8)
