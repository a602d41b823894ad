"""TD3 finds a known optimal continuous action offline, and learns from a Gym behaviour log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from continuous_timelines import (
    ACTION_HIGH,
    ACTION_LOW,
    fit_spec,
    make_continuous_bandit_timelines,
    optimal_action,
)

from apps.gym_envs import TargetReachEnv
from features import fit_normalization, frame_from_feature_maps
from trainer import ContinuousOnnxPolicy, Td3Config, export_continuous_policy, train_td3
from trainer.gym_loop import (
    GymLoopError,
    OnlineLoopConfig,
    collect_timelines,
    evaluate_onnx_policy,
    run_online,
)

BANDIT_CONFIG = Td3Config(
    action_low=ACTION_LOW,
    action_high=ACTION_HIGH,
    gamma=0.0,
    hidden_sizes=[64, 64],
    batch_size=128,
    num_epochs=15,
    actor_learning_rate=3e-3,
    critic_learning_rate=3e-3,
)


def test_td3_finds_the_optimal_action_from_uniformly_logged_data(tmp_path: Path) -> None:
    timelines = make_continuous_bandit_timelines(2000, seed=0)
    steps: list[int] = []
    result = train_td3(
        timelines, fit_spec(timelines), ["a"], BANDIT_CONFIG, tmp_path / "tb", on_step=steps.append
    )

    policy = ContinuousOnnxPolicy(export_continuous_policy(result.network), ACTION_LOW, ACTION_HIGH)
    x = np.linspace(-0.9, 0.9, 19, dtype=np.float32)[:, None]
    error = np.abs(policy.greedy(x)[:, 0] - optimal_action(x[:, 0]))
    assert error.mean() < 0.25, error
    assert steps == list(range(1, 15 * 16 + 1))  # 2000 rows / 128 = 16 minibatches per epoch
    # TD3's served exploration noise is the configured constant, before the squash.
    _, _, log_std = policy.outputs(x)
    np.testing.assert_allclose(log_std, np.log(BANDIT_CONFIG.exploration_noise_std), rtol=1e-6)


def test_td3_learns_offline_from_a_logged_gym_behaviour_policy(tmp_path: Path) -> None:
    """Offline mode: a random behaviour policy logs timelines; the ONNX policy trained on them wins."""
    timelines = collect_timelines(TargetReachEnv, lambda obs, rng: rng.uniform(-1, 1, 1), 3000, seed=0)
    assert timelines["not_terminal"].sum() == len(timelines) - timelines["mdp_id"].nunique()
    spec = fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
    config = Td3Config(
        action_low=[-1.0],
        action_high=[1.0],
        gamma=0.9,
        hidden_sizes=[32, 32],
        batch_size=128,
        num_epochs=15,
        actor_learning_rate=3e-3,
        critic_learning_rate=3e-3,
        target_update_tau=0.05,
    )
    result = train_td3(timelines, spec, ["action_0"], config, tmp_path / "tb")

    scores = evaluate_onnx_policy(
        export_continuous_policy(result.network), TargetReachEnv, 20, 1000, ([-1.0], [1.0])
    )
    logged = timelines.groupby("mdp_id")["reward"].sum().mean()
    assert np.mean(scores) > logged / 2, (np.mean(scores), logged)


def test_td3_online_loop_beats_the_random_warmup(tmp_path: Path) -> None:
    config = Td3Config(
        action_low=[-1.0],
        action_high=[1.0],
        gamma=0.9,
        hidden_sizes=[32, 32],
        batch_size=64,
        actor_learning_rate=3e-3,
        critic_learning_rate=3e-3,
        target_update_tau=0.05,
    )
    loop = OnlineLoopConfig(
        total_env_steps=400, warmup_steps=100, steps_per_round=50, eval_episodes=10, eval_every_steps=200
    )
    result = run_online(config, loop, tmp_path / "tb", make_env=TargetReachEnv)
    assert [h["env_steps"] for h in result.history] == [200.0, 400.0]
    assert result.mean_score > -4.0  # random ≈ −10.6 over 20 steps
    assert result.train_s < result.wall_s


def test_loop_refuses_a_config_whose_bounds_differ_from_the_env(tmp_path: Path) -> None:
    config = Td3Config(action_low=[-2.0], action_high=[2.0])
    with pytest.raises(GymLoopError, match="differ from env"):
        run_online(config, OnlineLoopConfig(total_env_steps=10), tmp_path, make_env=TargetReachEnv)
