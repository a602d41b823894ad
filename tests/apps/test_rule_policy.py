"""The app's day-0 rule: its propensities by hand, its draws against them, and the ONNX stand-in tests use."""

from __future__ import annotations

import numpy as np
import pytest

from apps.notifications import FEATURE_NAMES, NotificationSim, NotificationSimConfig
from apps.rule_policy import NotifyQuietUsersRule
from tests.infra.onnx_rule import register_rule_policy
from trainer import ModelRegistry, OnnxPolicy

NAN = float("nan")


def _row(active_days: float, sent_previous: float) -> list[float]:
    # FEATURE_NAMES order: active_days_7d, notif_ctr_30d, tenure_days, slot, sent_previous_slot
    return [active_days, 0.3, 120.0, 1.0, sent_previous]


# (active_days_7d, sent_previous_slot) → P(send) with max_active_days 3, ε 0.2:
# greedy 'send' gets 1 − ε + ε/2 = 0.9, greedy 'dont_send' leaves 'send' ε/2 = 0.1.
HAND_COMPUTED = [
    ((0.0, 0.0), 0.9),
    ((3.0, 0.0), 0.9),  # at the threshold: still quiet
    ((4.0, 0.0), 0.1),  # too active
    ((1.0, 1.0), 0.1),  # notified in the previous slot
    ((NAN, 0.0), 0.1),  # missing activity: the cautious choice
    ((1.0, NAN), 0.1),  # missing previous send: the cautious choice
]


def test_send_probability_by_hand() -> None:
    rule = NotifyQuietUsersRule(max_active_days=3, epsilon=0.2, feature_names=FEATURE_NAMES)
    features = np.array([_row(*inputs) for inputs, _ in HAND_COMPUTED])
    expected = [p for _, p in HAND_COMPUTED]
    np.testing.assert_allclose(rule.send_probability(features), expected, rtol=0, atol=1e-15)
    assert rule.greedy_send(features).tolist() == [True, True, False, False, False, False]


def test_columns_are_found_by_name() -> None:
    names = ("sent_previous_slot", "active_days_7d")
    rule = NotifyQuietUsersRule(max_active_days=2, epsilon=0.5, feature_names=names)
    # quiet & fresh → 1 − 0.25; quiet but just notified → 0.25
    np.testing.assert_array_equal(rule.send_probability(np.array([[0.0, 2.0], [1.0, 2.0]])), [0.75, 0.25])


@pytest.mark.parametrize(
    ("epsilon", "p_greedy_row", "p_other_row"),
    [(0.2, 0.9, 0.1), (0.0, 1.0, 0.0), (1.0, 0.5, 0.5)],
)
def test_decisions_carry_their_exact_propensity(
    epsilon: float, p_greedy_row: float, p_other_row: float
) -> None:
    rule = NotifyQuietUsersRule(max_active_days=3, epsilon=epsilon, feature_names=FEATURE_NAMES)
    n = 20_000
    features = np.array([_row(1.0, 0.0)] * n + [_row(6.0, 0.0)] * n)
    decisions = rule.decide(features, np.random.default_rng(3))
    for rows, p_send in ((slice(0, n), p_greedy_row), (slice(n, 2 * n), p_other_row)):
        send, propensity = decisions.send[rows], decisions.propensity[rows]
        # every logged propensity is the probability of the action actually taken
        np.testing.assert_array_equal(propensity[send], np.full(send.sum(), p_send))
        np.testing.assert_array_equal(propensity[~send], np.full((~send).sum(), 1.0 - p_send))
        # and the draws follow it: share of sends within 5 binomial standard errors
        assert abs(send.mean() - p_send) <= 5 * np.sqrt(p_send * (1 - p_send) / n) + 1e-12
    # IPS identity: with full support, E[1 / π(a)] over a ~ π is the number of actions (2)
    if epsilon > 0.0:
        assert np.mean(1.0 / decisions.propensity) == pytest.approx(2.0, rel=0.05)
    assert (decisions.propensity > 0).all()


def test_bad_rule_is_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\], got 1.5"):
        NotifyQuietUsersRule(max_active_days=3, epsilon=1.5, feature_names=FEATURE_NAMES)
    with pytest.raises(ValueError, match="'sent_previous_slot', missing from feature_names"):
        NotifyQuietUsersRule(max_active_days=3, epsilon=0.1, feature_names=("active_days_7d",))


def test_simulator_rule_is_the_configured_rule() -> None:
    config = NotificationSimConfig(n_users=50, rule_max_active_days=2, rule_epsilon=0.3)
    sim = NotificationSim(config)
    rule = sim.rule()
    assert (rule.max_active_days, rule.epsilon) == (2, 0.3)
    features = np.array([_row(2.0, 0.0), _row(3.0, 0.0)])
    np.testing.assert_allclose(sim.rule_send_probability(features), [0.85, 0.15], atol=1e-15)


def test_onnx_stand_in_matches_the_numpy_rule(tmp_path) -> None:
    """The ONNX rule other tests register and serve decides with the app's rule's probabilities."""
    config = NotificationSimConfig(n_users=500)
    registry = ModelRegistry(tmp_path)
    policy = OnnxPolicy.load(registry, register_rule_policy(registry, config).version)
    sim = NotificationSim(config)
    day = sim.start_day(0)
    for sent in (False, True):
        features = sim.features(day, 1, np.full(config.n_users, sent))
        probabilities = policy.probabilities(
            features.astype(np.float32), np.ones((config.n_users, 2), np.float32)
        )
        np.testing.assert_allclose(probabilities[:, 1], sim.rule().send_probability(features), atol=1e-7)
