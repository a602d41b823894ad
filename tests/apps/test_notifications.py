"""The simulated app: its economics must make the demo's bar meaningful, and its exact values right."""

from __future__ import annotations

import numpy as np
import pytest

from apps.notifications import ACTIONS, FEATURE_NAMES, NotificationSim, NotificationSimConfig


@pytest.fixture(scope="module")
def sim() -> NotificationSim:
    return NotificationSim(NotificationSimConfig(n_users=3000))


def test_rule_is_sensible_but_beatable(sim: NotificationSim) -> None:
    day = sim.start_day(0)
    n = sim.config.n_users
    rule = sim.policy_value(day, sim.rule_send_probability)
    never = sim.policy_value(day, lambda f: np.zeros(len(f)))
    always = sim.policy_value(day, lambda f: np.ones(len(f)))
    oracle = sim.oracle_value(day)
    assert rule > never and rule > always, "the hand-written rule must beat trivial policies"
    # the gap must be large against one day's sampling noise (≈ sqrt(0.25 / decisions))
    noise = np.sqrt(0.25 / (n * sim.config.slots_per_day))
    assert oracle - rule > 8 * noise


def test_policy_value_matches_monte_carlo(sim: NotificationSim) -> None:
    """The exact expectation (state-distribution propagation) agrees with sampling."""
    day = sim.start_day(1)
    exact = sim.policy_value(day, sim.rule_send_probability)
    rng = np.random.default_rng(0)
    n = sim.config.n_users
    totals = []
    for _ in range(20):
        sent_previous = np.zeros(n, dtype=bool)
        total = 0.0
        for slot in range(sim.config.slots_per_day):
            p = sim.rule_send_probability(sim.features(day, slot, sent_previous))
            send = rng.random(n) < p
            total += sim.expected_reward(slot, send.astype(float), sent_previous).sum()
            sent_previous = send
        totals.append(total / (n * sim.config.slots_per_day))
    assert abs(np.mean(totals) - exact) < 4 * np.std(totals) / np.sqrt(len(totals)) + 1e-4


def test_oracle_beats_every_fixed_schedule(sim: NotificationSim) -> None:
    """The DP oracle is at least as good as each of the 16 fixed send schedules for everyone."""
    day = sim.start_day(0)
    oracle = sim.oracle_value(day)
    n = sim.config.n_users
    for mask in range(2**sim.config.slots_per_day):
        schedule = [(mask >> s) & 1 for s in range(sim.config.slots_per_day)]
        value = 0.0
        sent_previous = np.zeros(n, dtype=bool)
        for slot, send_flag in enumerate(schedule):
            send = np.full(n, bool(send_flag))
            value += sim.expected_reward(slot, send.astype(float), sent_previous).sum()
            sent_previous = send
        assert value / (n * sim.config.slots_per_day) <= oracle + 1e-12


def test_observations_are_deterministic_per_day_and_shaped(sim: NotificationSim) -> None:
    a, b = sim.start_day(2), sim.start_day(2)
    np.testing.assert_array_equal(a.active_days_7d, b.active_days_7d)
    features = sim.features(a, 0, np.zeros(sim.config.n_users, dtype=bool))
    assert features.shape == (sim.config.n_users, len(FEATURE_NAMES))
    assert set(np.unique(features[:, 0])) <= set(range(8))
    assert ACTIONS == ("dont_send", "send")


def test_the_package_re_exports_the_world_and_rewards_are_engagement_minus_cost(sim: NotificationSim) -> None:
    """`apps.notifications` is a package (manifest, simulator, world); its names are the world's."""
    from apps.notifications import world

    assert NotificationSim is world.NotificationSim and ACTIONS is world.ACTIONS
    day = sim.start_day(1)
    n = sim.config.n_users
    send = np.arange(n) % 2 == 0
    sent_previous = np.arange(n) % 3 == 0
    engaged = sim.draw_engagement(day, 2, send, sent_previous)
    np.testing.assert_array_equal(engaged, sim.draw_engagement(day, 2, send, sent_previous))  # seeded
    rewards = sim.draw_rewards(day, 2, send, sent_previous)
    np.testing.assert_array_equal(rewards, engaged.astype(float) - 0.05 * send.astype(float))
    assert set(np.unique(rewards)) <= {-0.05, 0.0, 0.95, 1.0}
