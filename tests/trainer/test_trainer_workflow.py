"""train_and_register end to end, then the registered model served through OnnxPolicy."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_timelines import BANDIT_ACTIONS, bandit_expected_reward, fit_spec, make_bandit_timelines

from trainer import (
    DqnConfig,
    EpsilonGreedyExploration,
    ModelRegistry,
    OnnxPolicy,
    PolicyInputError,
    train_and_register,
)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("workflow")
    timelines = make_bandit_timelines(300, seed=10)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=0.0, num_epochs=30, batch_size=64, learning_rate=3e-3, hidden_sizes=[32, 32])
    registry = ModelRegistry(root / "registry")
    metadata = train_and_register(
        timelines, spec, BANDIT_ACTIONS, config, registry, root / "tb", EpsilonGreedyExploration(epsilon=0.1)
    )
    return registry, metadata, spec, timelines, config


def test_metadata_records_how_the_model_was_made(registered) -> None:
    registry, metadata, spec, timelines, config = registered
    assert registry.list_versions() == [metadata.version] and registry.deployed() is None
    assert metadata.algorithm == "dqn" and DqnConfig.model_validate(metadata.algorithm_config) == config
    assert metadata.feature_names == spec.feature_names and metadata.actions == BANDIT_ACTIONS
    assert metadata.normalization_spec_version == spec.version
    assert metadata.normalization_spec_sha256 == spec.content_sha256
    assert metadata.data_range.rows == 300
    assert metadata.data_range.start == timelines["timestamp"].min().to_pydatetime()
    assert metadata.data_range.end == timelines["timestamp"].max().to_pydatetime()
    assert {"train/td_loss", "train/mc_loss", "train/q_mean/up"} <= set(metadata.training_metrics)
    assert metadata.code_version.startswith(("git:", "streamrl=="))


def test_onnx_policy_serves_the_learned_q_values(registered) -> None:
    registry, metadata, _, _, _ = registered
    policy = OnnxPolicy.load(registry, metadata.version)

    x1 = np.array([-0.8, -0.5, 0.5, 0.8, 0.0])
    maps = [{"x1": float(v), "x2": None} for v in x1]  # x2 missing → NaN
    features = policy.features(maps)
    assert features.dtype == np.float32 and np.isnan(features[:, metadata.feature_names.index("x2")]).all()
    mask = policy.possible_mask(
        [BANDIT_ACTIONS, BANDIT_ACTIONS, BANDIT_ACTIONS, BANDIT_ACTIONS, ["stay", "up"]]
    )

    q = policy.q_values(features, mask)
    expected = bandit_expected_reward(x1)
    np.testing.assert_allclose(q[:4], expected[:4], atol=0.15)
    assert np.isneginf(q[4, BANDIT_ACTIONS.index("down")])
    assert list(q[:4].argmax(axis=1)) == [1, 1, 0, 0]

    probs = policy.probabilities(features, mask)
    # served ε-greedy, ε = 0.1: 1 − ε on the best possible action, ε spread over the possible ones
    best = np.where(mask > 0.5, q, -np.inf).argmax(axis=1)
    expected = 0.9 * np.eye(3)[best] + 0.1 * mask / mask.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-12)
    assert probs[0, 1] == pytest.approx(0.9 + 0.1 / 3)  # 0.9333: `down` is best at x1 = −0.8
    assert probs[0, 0] == pytest.approx(0.1 / 3)  # 0.0333
    # two possible actions: 0.9 + 0.1/2 = 0.95 and 0.1/2 = 0.05; `down` is impossible: 0
    assert sorted(probs[4]) == pytest.approx([0.0, 0.05, 0.95])
    assert probs[4, BANDIT_ACTIONS.index("down")] == 0.0


def test_onnx_policy_rejects_inputs_that_do_not_fit_the_model(registered) -> None:
    registry, metadata, _, _, _ = registered
    policy = OnnxPolicy.load(registry, metadata.version)
    with pytest.raises(PolicyInputError, match="'jump'"):
        policy.possible_mask([["up", "jump"]])
    with pytest.raises(PolicyInputError, match=r"expects \[batch, 2\]"):
        policy.q_values(np.zeros((2, 5), dtype=np.float32), np.ones((2, 3), dtype=np.float32))
    with pytest.raises(PolicyInputError, match="at least one possible action"):
        policy.q_values(np.zeros((1, 2), dtype=np.float32), np.zeros((1, 3), dtype=np.float32))
