"""CartPole offline, tiny: random-policy logs → DQN → ONNX, scored on the exported graph."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from features import fit_normalization, frame_from_feature_maps
from trainer import DqnConfig, export_model, train_dqn
from trainer.gym_discrete import CARTPOLE_ACTIONS, collect_discrete_timelines, evaluate_discrete_onnx


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def test_random_logs_follow_the_timeline_contract_with_only_real_terminations_terminal() -> None:
    timelines = collect_discrete_timelines(_cartpole, 1_000, seed=0)
    assert len(timelines) == 1_000
    assert set(timelines["action"]) == set(CARTPOLE_ACTIONS)
    assert (timelines["action_probability"] == 0.5).all() and (timelines["reward"] == 1.0).all()
    last = timelines.groupby("mdp_id").tail(1)
    terminal = timelines[~timelines["not_terminal"]]
    assert len(terminal) == timelines["mdp_id"].nunique() - 1  # the episode cut off by the budget goes on
    assert terminal.index.isin(last.index).all()
    assert all(m == {} for m in terminal["next_state_features"])
    cut_off = timelines.iloc[-1]  # the budget ran out mid-episode: not terminal, with a next state
    assert bool(cut_off["not_terminal"]) is True
    assert set(cut_off["next_state_features"]) == set(timelines.iloc[0]["state_features"])


def test_dqn_on_tiny_random_cartpole_logs_clearly_beats_the_random_policy(tmp_path: Path) -> None:
    timelines = collect_discrete_timelines(_cartpole, 3_000, seed=0)
    random_score = float(len(timelines) / timelines["mdp_id"].nunique())  # ≈ 22 steps per episode
    spec = fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
    config = DqnConfig(gamma=0.99, num_epochs=20, batch_size=64)

    result = train_dqn(timelines, spec, CARTPOLE_ACTIONS, config, tmp_path / "tb")

    scores = evaluate_discrete_onnx(export_model(result.network, 1.0), _cartpole, episodes=10, seed=1000)
    assert random_score < 30
    assert np.mean(scores) > 3 * random_score, (np.mean(scores), random_score)
