"""The day-0 rule served as ONNX gives exactly the simulator's rule propensities."""

from __future__ import annotations

import numpy as np

from apps.notifications import NotificationSim, NotificationSimConfig
from apps.rule_policy import register_rule_policy
from trainer import ModelRegistry, OnnxPolicy


def test_onnx_rule_matches_simulator_rule(tmp_path) -> None:
    config = NotificationSimConfig(n_users=500)
    registry = ModelRegistry(tmp_path)
    metadata = register_rule_policy(registry, config)
    policy = OnnxPolicy.load(registry, metadata.version)
    sim = NotificationSim(config)
    day = sim.start_day(0)
    for sent in (False, True):
        features = sim.features(day, 1, np.full(config.n_users, sent))
        probabilities = policy.probabilities(
            features.astype(np.float32), np.ones((config.n_users, 2), np.float32)
        )
        np.testing.assert_allclose(probabilities[:, 1], sim.rule_send_probability(features), atol=1e-7)


def test_missing_features_mean_do_not_send(tmp_path) -> None:
    registry = ModelRegistry(tmp_path)
    metadata = register_rule_policy(registry, NotificationSimConfig(rule_epsilon=0.0))
    policy = OnnxPolicy.load(registry, metadata.version)
    features = np.full((1, len(metadata.feature_names)), np.nan, dtype=np.float32)
    probabilities = policy.probabilities(features, np.ones((1, 2), np.float32))
    assert probabilities[0].tolist() == [1.0, 0.0]
