"""Sequential estimators: hand-computed PDIS / WDR / MAGIC, reductions to one-step estimators, and
sequential DR / MAGIC landing on the truth of a small MDP with a known value."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import (
    EvaluationError,
    RidgeFqeConfig,
    fitted_q_evaluation,
    one_step_estimates,
    sequential_estimates,
)

# Episode 0 has 2 steps, episode 1 has 1 (see test_estimators.test_sequential_dr_hand_computed).
EPISODE = np.array([0, 0, 1])
PI = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
Q_HAT = np.array([[1.0, 2.0], [2.0, 0.0], [5.0, 3.0]])
ACTION = np.array([0, 0, 0])
MU = np.array([0.25, 0.5, 0.5])
REWARD = np.array([1.0, 3.0, 10.0])


def test_pdis_wdr_magic_hand_computed() -> None:
    e = sequential_estimates(EPISODE, PI, Q_HAT, ACTION, MU, REWARD, gamma=0.5)
    # cumulative weights: episode 0 → (2, 4), episode 1 → 0 (kept at 0 after it ends)
    # PDIS: episode 0 = 2·1 + .5·4·3 = 8, episode 1 = 0 → 4
    assert e["pdis"].value == pytest.approx(4.0)
    assert e["sequential_dr"].value == pytest.approx(4.25)
    # WDR: a_0 = 0/1, a_1 = mean(.5·4·(3−2), 0) / mean(4, 0) = .5; b_0 = mean(1.5, 3) = 2.25,
    #      b_1 = mean(.5·2·2, 0) / mean(2, 0) = 1 → 3.75
    assert e["wdr"].value == pytest.approx(3.75)
    # j-step returns: g(−1) = DM = 2.25, g(0) = 3.25, g(1) = WDR = 3.75: MAGIC is a blend of them
    assert 2.25 - 1e-9 <= e["magic"].value <= 3.75 + 1e-9
    for name in ("pdis", "wdr", "magic"):
        assert e[name].logged_value == pytest.approx(6.25)
        assert e[name].normalized == pytest.approx(e[name].value / 6.25)


def test_magic_equals_the_truth_when_every_truncation_agrees() -> None:
    """Off-policy, deterministic rewards and an exact model, so every j-step return is the truth.

    Two steps, γ = .5, π = (.25, .75) at both steps, logged uniformly (ρ = .5 for action 0, 1.5 for 1),
    one episode per action pair. Rewards r_0 = (1, 3), r_1 = (2, 6) per action; the next state does
    not depend on the action. Exact model: q̂_1 = r_1, v̂_1 = .25·2 + .75·6 = 5,
    q̂_0 = r_0 + γ·v̂_1 = (3.5, 5.5), v̂_0 = .25·3.5 + .75·5.5 = 5 = the truth (.25·1 + .75·3 + .5·5).
    Each step's model error r_t − q̂_t = −γ·v̂_{t+1} cancels the next step's model term, so
    g(−1) = g(0) = g(1) = 5. PDIS, per episode (ρ_0 r_0 + γ ρ_0 ρ_1 r_1): .75, 2.75, 5.25, 11.25 → 5."""
    episode = np.repeat(np.arange(4), 2)
    action = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    step = np.tile([0, 1], 4)
    reward = np.where(step == 0, np.array([1.0, 3.0])[action], np.array([2.0, 6.0])[action])
    q_hat = np.where(step[:, None] == 0, [[3.5, 5.5]], [[2.0, 6.0]])
    pi = np.tile([0.25, 0.75], (8, 1))
    e = sequential_estimates(episode, pi, q_hat, action, np.full(8, 0.5), reward, gamma=0.5)
    for name in ("pdis", "sequential_dr", "wdr", "magic"):
        assert e[name].value == pytest.approx(5.0, abs=1e-9), name
    assert e["magic"].ci_low == pytest.approx(5.0, abs=1e-9)  # every resample gives 5 too
    assert e["magic"].ci_high == pytest.approx(5.0, abs=1e-9)


def test_magic_takes_the_model_value_when_it_has_no_variance_and_no_bias() -> None:
    """20 one-step episodes logged on-policy (π = μ = .5, so every weight is 1), rewards 1.1 ± 1,
    q̂ = 1 for both actions. The j-step returns: g(−1) = DM = 1 in every bootstrap resample (zero
    variance), g(0) = WDR = mean r = 1.1 with variance > 0. DM lies inside WDR's interval, so its
    bias is 0 and the variance + bias² minimizing blend is all DM: MAGIC = 1."""
    n = 20
    reward = 1.1 + np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    action = (np.arange(n) // 2) % 2
    e = sequential_estimates(
        np.arange(n), np.full((n, 2), 0.5), np.ones((n, 2)), action, np.full(n, 0.5), reward, gamma=0.9
    )
    assert e["wdr"].value == pytest.approx(1.1) and e["pdis"].value == pytest.approx(1.1)
    assert e["wdr"].ci_low < 1.0 < e["wdr"].ci_high  # DM is unbiased as far as WDR can tell
    assert e["magic"].value == pytest.approx(1.0, abs=1e-6)


def test_one_step_episodes_reduce_to_one_step_estimators() -> None:
    rng = np.random.default_rng(0)
    n = 400
    pi = rng.dirichlet(np.ones(3), size=n)
    action = rng.integers(0, 3, n)
    mu = np.full(n, 1 / 3)
    reward = rng.normal(1.0, 0.5, n)
    q_hat = rng.normal(1.0, 0.2, (n, 3))
    seq = sequential_estimates(np.arange(n), pi, q_hat, action, mu, reward, gamma=0.9)
    one = one_step_estimates(pi, q_hat, action, mu, reward)
    assert seq["pdis"].value == pytest.approx(one["ips"].value)
    assert seq["sequential_dr"].value == pytest.approx(one["dr"].value)
    assert seq["wdr"].value == pytest.approx(one["sndr"].value)  # self-normalized per step = SNDR
    low, high = sorted((one["dm"].value, one["sndr"].value))
    assert low - 1e-9 <= seq["magic"].value <= high + 1e-9


def _chain(n_episodes: int, seed: int) -> tuple[np.ndarray, ...]:
    """2-step MDP, state = step one-hot. Step 0: action 1 pays 1; step 1: action 1 pays 2 if step 0 took
    action 1, else 0. Logging uniform; target takes action 1 w.p. 0.8 → truth = .8 + γ·.8·.8·2."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 2, (n_episodes, 2))
    reward = np.stack([action[:, 0] * 1.0, action[:, 1] * action[:, 0] * 2.0], axis=1)
    reward = reward + rng.normal(0.0, 0.1, reward.shape)
    features = np.tile(np.eye(2), (n_episodes, 1))
    features = np.hstack(
        [features, np.repeat(action[:, :1], 2, axis=0) * np.array([[0.0], [1.0]] * n_episodes)]
    )
    pi = np.tile([0.2, 0.8], (2 * n_episodes, 1))
    return (
        np.repeat(np.arange(n_episodes), 2),
        features,
        action.ravel(),
        np.full(2 * n_episodes, 0.5),
        reward.ravel(),
        pi,
    )


def test_sequential_estimators_and_fqe_find_a_known_value() -> None:
    gamma = 0.9
    truth = 0.8 + gamma * 0.8 * 0.8 * 2.0
    episode, features, action, mu, reward, pi = _chain(4_000, seed=1)
    fqe = fitted_q_evaluation(features, episode, action, reward, pi, gamma, RidgeFqeConfig(l2=1e-3))
    assert fqe.fit.iterations == 2  # capped at the horizon
    estimates = sequential_estimates(episode, pi, fqe.q_hat, action, mu, reward, gamma)
    for name in ("pdis", "sequential_dr", "wdr", "magic"):
        e = estimates[name]
        assert e.ci_low <= truth <= e.ci_high, (name, truth, e)
        assert abs(e.value - truth) / truth < 0.05, name
    # with a correct long-term Q, DR's interval is much narrower than plain importance sampling
    width = {k: estimates[k].ci_high - estimates[k].ci_low for k in ("pdis", "sequential_dr")}
    assert width["sequential_dr"] < 0.7 * width["pdis"]
    v0 = np.sum(pi[::2] * fqe.q_hat[::2], axis=1).mean()
    assert v0 == pytest.approx(truth, rel=0.03)


def test_bad_grouping_and_unknown_estimator_are_rejected() -> None:
    with pytest.raises(EvaluationError, match="grouped and non-decreasing"):
        sequential_estimates(np.array([0, 1, 0]), PI, Q_HAT, ACTION, MU, REWARD, 0.9)
    with pytest.raises(EvaluationError, match="unknown sequential estimators \\['dr'\\]"):
        sequential_estimates(EPISODE, PI, Q_HAT, ACTION, MU, REWARD, 0.9, names=("dr",))
