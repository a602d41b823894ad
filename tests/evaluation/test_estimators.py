"""Estimators: known answers (REFERENCE §3 and a hand-computed sequential case), interval coverage
on a bandit whose truth is computable, and DR's protection against a biased reward model."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import (
    EvaluationError,
    direct_method,
    doubly_robust,
    ips,
    one_step_estimates,
    self_normalized_doubly_robust,
    sequential_doubly_robust,
    snips,
    switch_doubly_robust,
)

# REFERENCE §3: logged rewards (4, 5, 7); the target policy matches the logged action only on the
# second decision, logged with propensity 0.5; q̂ of the target action sums to 10, q̂(x2, a2) = 4.
PI = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
Q_HAT = np.array([[3.0, 9.0], [4.0, 9.0], [3.0, 9.0]])
LOGGED_ACTION = np.array([1, 0, 1])
PROPENSITY = np.array([0.5, 0.5, 0.5])
REWARD = np.array([4.0, 5.0, 7.0])
LOGGED_VALUE = 16.0 / 3.0


def test_one_step_known_answers() -> None:
    args = (LOGGED_ACTION, PROPENSITY, REWARD)
    dm = direct_method(PI, Q_HAT, *args)
    assert dm.value == pytest.approx(10 / 3)
    assert ips(PI, *args).value == pytest.approx(5 / 0.5 / 3)
    assert snips(PI, *args).value == pytest.approx(5.0)  # Σ w r / Σ w = (2·5) / 2
    dr = doubly_robust(PI, Q_HAT, *args)
    assert dr.value == pytest.approx(10 / 3 + (1 / 0.5) * (5 - 4) / 3)
    assert dr.normalized == pytest.approx(dr.value / LOGGED_VALUE)
    assert dr.logged_value == pytest.approx(LOGGED_VALUE)
    # weights (0, 2, 0): ESS = (Σw)² / Σw² = 4 / 4
    assert dr.effective_sample_size == pytest.approx(1.0)
    assert dr.max_weight == pytest.approx(2.0)
    assert (dr.min_propensity, dr.max_propensity) == (0.5, 0.5)
    assert dm.effective_sample_size is None


def test_one_step_estimates_share_resamples_with_single_estimators() -> None:
    together = one_step_estimates(PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD, seed=3)
    alone = doubly_robust(PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD, seed=3)
    assert set(together) == {"dm", "ips", "snips", "dr", "sndr", "switch_dr"}
    assert (together["dr"].ci_low, together["dr"].ci_high) == (alone.ci_low, alone.ci_high)


def test_sequential_dr_hand_computed() -> None:
    # Episode 0 (2 steps), episode 1 (1 step); γ = 0.5.
    # Step 0: π=(.5,.5), a=0, μ=.25 → ρ=2, w0=2; r=1, q̂=(1,2) → v̂=1.5
    # Step 1: π=(1,0),  a=0, μ=.5  → ρ=2, w1=4; r=3, q̂=(2,0) → v̂=2
    #   V = [w0(r0−q̂0) + v̂0] + γ[w1(r1−q̂1) + w0 v̂1] = [0 + 1.5] + .5[4 + 4] = 5.5
    # Episode 1: π=(0,1), a=0 → w=0; q̂=(5,3) → v̂=3; V = 3
    episode = np.array([0, 0, 1])
    pi = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    q_hat = np.array([[1.0, 2.0], [2.0, 0.0], [5.0, 3.0]])
    action = np.array([0, 0, 0])
    mu = np.array([0.25, 0.5, 0.5])
    reward = np.array([1.0, 3.0, 10.0])
    estimate, values = sequential_doubly_robust(episode, pi, q_hat, action, mu, reward, gamma=0.5)
    np.testing.assert_allclose(values, [5.5, 3.0])
    assert estimate.value == pytest.approx(4.25)
    # logged discounted returns: 1 + .5·3 = 2.5 and 10 → mean 6.25
    assert estimate.logged_value == pytest.approx(6.25)
    assert estimate.normalized == pytest.approx(4.25 / 6.25)
    assert estimate.n == 2
    assert estimate.max_weight == pytest.approx(4.0)
    # trajectory weights (4, 0): ESS = 16 / 16
    assert estimate.effective_sample_size == pytest.approx(1.0)


def test_sequential_dr_on_one_step_episodes_equals_dr() -> None:
    episode = np.arange(3)
    seq, _ = sequential_doubly_robust(episode, PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD, gamma=0.9)
    assert seq.value == pytest.approx(doubly_robust(PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD).value)


def _synthetic_bandit(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """3 actions, E[r|x,a] = x·(1, −1, 0) + (2, 2, 2.2); logging 0.2/0.2/0.6; target is a soft policy."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    mean = np.stack([x + 2, -x + 2, np.full(n, 2.2)], axis=1)
    mu_all = np.array([0.2, 0.2, 0.6])
    action = rng.choice(3, size=n, p=mu_all)
    reward = mean[np.arange(n), action] + rng.normal(0, 0.5, n)
    pi = np.where(x[:, None] > 0, [0.8, 0.1, 0.1], [0.1, 0.8, 0.1])
    return pi, mean, action, mu_all[action], reward


# Truth: E over x of Σ_a π(a|x) E[r|x,a] = 0.8·E|x| + 0.1·(−E|x|) + 2 + 0.1·0.2 = 0.7·0.5 + 2.02
TRUTH = 0.7 * 0.5 + 2.02


def test_bootstrap_interval_covers_truth_and_shrinks_with_data() -> None:
    widths = {}
    for n in (2_000, 50_000):
        pi, mean, action, mu, reward = _synthetic_bandit(n, seed=n)
        estimates = one_step_estimates(pi, mean, action, mu, reward, bootstrap_samples=300, seed=1)
        for name in ("ips", "snips", "dr"):
            e = estimates[name]
            assert e.ci_low <= TRUTH <= e.ci_high, (name, n, e)
            assert e.normalized_ci_low <= e.normalized <= e.normalized_ci_high
        widths[n] = estimates["ips"].ci_high - estimates["ips"].ci_low
    # standard error ∝ 1/√n: 25× the data → ~5× narrower
    assert 3.0 < widths[2_000] / widths[50_000] < 8.0


def test_dr_corrects_a_biased_reward_model_where_dm_cannot() -> None:
    pi, mean, action, mu, reward = _synthetic_bandit(20_000, seed=7)
    biased = mean + np.array([0.5, 0.6, 0.4])  # DM bias = E Σ π·b ≈ 0.53
    dm = direct_method(pi, biased, action, mu, reward)
    dr = doubly_robust(pi, biased, action, mu, reward)
    assert abs(dm.value - TRUTH) > 0.3
    assert abs(dr.value - TRUTH) < 0.05
    assert dr.ci_low <= TRUTH <= dr.ci_high
    assert not (dm.ci_low <= TRUTH <= dm.ci_high)


def test_large_data_bootstrap_runs_in_chunks() -> None:
    pi, mean, action, mu, reward = _synthetic_bandit(300_000, seed=11)
    e = doubly_robust(pi, mean, action, mu, reward, bootstrap_samples=100)
    assert e.ci_low < e.value < e.ci_high
    assert e.ci_high - e.ci_low < 0.02


@pytest.mark.parametrize(
    ("propensity", "message"),
    [
        (np.array([0.5, 0.0, 0.5]), "logged_propensity must be in \\(0, 1\\]"),
        (np.array([0.5, 1.5, 0.5]), "rows \\[1\\] = \\[1.5\\]"),
        (np.array([0.5, np.nan, 0.5]), "1 are not"),
    ],
)
def test_bad_propensities_are_rejected(propensity: np.ndarray, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        ips(PI, LOGGED_ACTION, propensity, REWARD)


def test_bad_shapes_and_empty_input_are_rejected() -> None:
    with pytest.raises(EvaluationError, match="q_hat \\(3, 3\\) must have the shape of target_probs"):
        direct_method(PI, np.zeros((3, 3)), LOGGED_ACTION, PROPENSITY, REWARD)
    with pytest.raises(EvaluationError, match="N = 0"):
        ips(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))
    with pytest.raises(EvaluationError, match="logged_action indices must be in \\[0, 2\\)"):
        ips(PI, np.array([0, 2, 1]), PROPENSITY, REWARD)
    with pytest.raises(EvaluationError, match="grouped and non-decreasing"):
        sequential_doubly_robust(np.array([0, 1, 0]), PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD, 0.9)


def test_sndr_and_switch_dr_known_answers() -> None:
    args = (PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD)
    # weights (0, 2, 0): SNDR = DM + Σ w(r − q̂) / Σ w = 10/3 + 2·(5 − 4) / 2
    assert self_normalized_doubly_robust(*args).value == pytest.approx(10 / 3 + 1.0)
    # τ = 3 keeps the weight 2: switch-DR = DR; τ = 1.5 drops it: switch-DR = DM, one of 3 rows clipped
    kept = switch_doubly_robust(*args, switch_threshold=3.0)
    assert kept.value == pytest.approx(10 / 3 + 2 * (5 - 4) / 3)
    assert kept.clipped_share == 0.0
    dropped = switch_doubly_robust(*args, switch_threshold=1.5)
    assert dropped.value == pytest.approx(10 / 3)
    assert dropped.clipped_share == pytest.approx(1 / 3)


def test_tiny_data_is_marked_unreliable_not_silent() -> None:
    e = doubly_robust(PI, Q_HAT, LOGGED_ACTION, PROPENSITY, REWARD)
    assert not e.reliable
    assert any("only 3 samples" in w for w in e.warnings)
    pi, mean, action, mu, reward = _synthetic_bandit(2_000, seed=5)
    assert doubly_robust(pi, mean, action, mu, reward).reliable


def test_target_never_taking_logged_actions_is_flagged() -> None:
    pi, mean, action, mu, reward = _synthetic_bandit(500, seed=6)
    never = np.zeros_like(pi)
    never[np.arange(500), (action + 1) % 3] = 1.0  # always an action other than the logged one
    e = ips(never, action, mu, reward)
    assert e.effective_sample_size == 0.0 and not e.reliable
    assert any("never takes the logged actions" in w for w in e.warnings)
    assert snips(never, action, mu, reward).warnings[0] == "snips: the value or its interval is not finite"


def test_invalid_target_probabilities_and_rewards_are_rejected() -> None:
    with pytest.raises(EvaluationError, match="target_probs must be finite, ≥ 0 and sum to 1"):
        ips(np.array([[0.5, 0.2], [1.0, 0.0], [1.0, 0.0]]), LOGGED_ACTION, PROPENSITY, REWARD)
    with pytest.raises(EvaluationError, match="reward must be finite; 1 are not, e.g. rows \\[2\\]"):
        ips(PI, LOGGED_ACTION, PROPENSITY, np.array([1.0, 2.0, np.inf]))
