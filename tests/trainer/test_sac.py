"""SAC finds a known optimal continuous action from logged data and improves online through ONNX."""

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
from pydantic import ValidationError

from apps.gym_envs import TargetReachEnv
from trainer import ContinuousOnnxPolicy, SacConfig, TrainingDataError, export_continuous_policy, train_sac
from trainer.gym_loop import OnlineLoopConfig, collect_timelines, run_online

BANDIT_CONFIG = SacConfig(
    action_low=ACTION_LOW,
    action_high=ACTION_HIGH,
    gamma=0.0,
    hidden_sizes=[64, 64],
    batch_size=128,
    num_epochs=15,
    actor_learning_rate=3e-3,
    critic_learning_rate=3e-3,
)


def test_sac_finds_the_optimal_action_from_uniformly_logged_data(tmp_path: Path) -> None:
    timelines = make_continuous_bandit_timelines(2000, seed=0)
    result = train_sac(timelines, fit_spec(timelines), ["a"], BANDIT_CONFIG, tmp_path / "tb")

    policy = ContinuousOnnxPolicy(export_continuous_policy(result.network), ACTION_LOW, ACTION_HIGH)
    x = np.linspace(-0.9, 0.9, 19, dtype=np.float32)[:, None]
    error = np.abs(policy.greedy(x)[:, 0] - optimal_action(x[:, 0]))
    # A uniform random action is off by ~1.1 on average; the learned greedy action by < 0.25.
    assert error.mean() < 0.25, error
    assert result.metrics["train/critic_loss"] < 0.3
    assert {"train/actor_loss", "train/alpha", "train/entropy", "train/q_mean"} <= set(result.metrics)
    assert len(result.history) == BANDIT_CONFIG.num_epochs
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_sac_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    timelines = make_continuous_bandit_timelines(300, seed=1)
    spec = fit_spec(timelines)
    config = BANDIT_CONFIG.model_copy(update={"num_epochs": 2, "hidden_sizes": [16]})
    first = train_sac(timelines, spec, ["a"], config, tmp_path / "a").network.state_dict()
    second = train_sac(timelines, spec, ["a"], config, tmp_path / "b").network.state_dict()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)


def test_sac_online_loop_beats_a_random_policy_within_a_few_hundred_steps(tmp_path: Path) -> None:
    random_score = (
        collect_timelines(TargetReachEnv, lambda obs, rng: rng.uniform(-1, 1, 1), 2000, seed=3)
        .groupby("mdp_id")["reward"]
        .sum()
        .mean()
    )
    config = SacConfig(
        action_low=[-1.0],
        action_high=[1.0],
        gamma=0.9,
        hidden_sizes=[32, 32],
        batch_size=64,
        actor_learning_rate=3e-3,
        critic_learning_rate=3e-3,
        target_update_tau=0.05,
    )
    loop = OnlineLoopConfig(total_env_steps=400, warmup_steps=100, steps_per_round=50, eval_episodes=20)
    result = run_online(config, loop, tmp_path / "tb", make_env=TargetReachEnv)

    assert result.env_steps == 400
    assert len(result.scores) == 20
    assert random_score < -8.0  # sanity of the baseline: a random walk stays far from 0
    assert result.mean_score > random_score / 2, (result.mean_score, random_score)


def test_bad_action_vectors_name_the_rows(tmp_path: Path) -> None:
    timelines = make_continuous_bandit_timelines(20, seed=2)
    spec = fit_spec(timelines)
    timelines.at[3, "action_vector"] = [1.0, 2.0]
    with pytest.raises(TrainingDataError, match=r"rows \[3 \(mdp_id='mdp-3'") as error:
        train_sac(timelines, spec, ["a"], BANDIT_CONFIG, tmp_path)
    assert error.value.column == "action_vector" and error.value.rows == [3]

    timelines.at[3, "action_vector"] = [2.5]
    with pytest.raises(TrainingDataError, match="outside"):
        train_sac(timelines, spec, ["a"], BANDIT_CONFIG, tmp_path)
    with pytest.raises(TrainingDataError, match="lack columns"):
        train_sac(timelines.drop(columns=["action_vector"]), spec, ["a"], BANDIT_CONFIG, tmp_path)


def test_config_rejects_inverted_bounds_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="low < high"):
        SacConfig(action_low=[1.0], action_high=[-1.0])
    with pytest.raises(ValidationError, match="one entry per action dimension"):
        SacConfig(action_low=[-1.0, -1.0], action_high=[1.0])
    with pytest.raises(ValidationError):
        SacConfig(action_low=[-1.0], action_high=[1.0], learning_rate=1e-3)
