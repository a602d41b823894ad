"""Closed loop on Gymnasium environments with discrete actions, offline, scored through ONNX.

A uniformly random behaviour policy logs timeline rows (`collect_discrete_timelines`: state
features by name, action names, propensity 1/A), a DQN-family learner trains on them, the
Q-network is exported, and `evaluate_discrete_onnx` scores the exported graph under onnxruntime,
never the torch module (REFERENCE §4: gym tests scored the served policy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pandas as pd

from trainer.artifact import FEATURES_INPUT, MASK_INPUT, Q_OUTPUT
from trainer.errors import TrainerError

EnvFactory = Callable[[], gym.Env]

#: CartPole-v1's observation, by name (the order of the observation vector).
CARTPOLE_FEATURES = ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"]
CARTPOLE_ACTIONS = ["left", "right"]


class GymDiscreteError(TrainerError):
    """An env whose spaces do not fit a discrete-action loop (or names that do not fit the env)."""


def collect_discrete_timelines(
    make_env: EnvFactory,
    env_steps: int,
    seed: int,
    feature_names: Sequence[str] = CARTPOLE_FEATURES,
    actions: Sequence[str] = CARTPOLE_ACTIONS,
) -> pd.DataFrame:
    """Log `env_steps` steps of a uniformly random policy as timeline rows (docs/architecture.md).

    Only a real termination is terminal (`not_terminal` False, empty next state). A time-limit
    truncation, and the episode cut off by `env_steps`, end on a non-terminal row whose next state
    is the observation reached: the MDP did not end there, its value continues.
    """
    env = make_env()
    _check_spaces(env, feature_names, actions)
    rng = np.random.default_rng(seed)
    names, action_names = list(feature_names), list(actions)
    propensity = 1.0 / len(action_names)
    rows: list[dict] = []
    episode, step = 0, 0
    obs, _ = env.reset(seed=seed)
    try:
        for i in range(env_steps):
            action = int(rng.integers(len(action_names)))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append(
                {
                    "mdp_id": f"episode-{seed}-{episode}",
                    "sequence_number": step,
                    "sequence_number_ordinal": step + 1,
                    "state_features": dict(zip(names, map(float, obs), strict=True)),
                    "action": action_names[action],
                    "action_probability": propensity,
                    "reward": float(reward),
                    "possible_actions": action_names,
                    "next_state_features": {}
                    if terminated
                    else dict(zip(names, map(float, next_obs), strict=True)),
                    "next_action": None,
                    "possible_next_actions": [] if terminated else action_names,
                    "not_terminal": not terminated,
                    "time_diff": 0 if terminated else 1,
                    "time_since_first": step,
                }
            )
            obs, step = next_obs, step + 1
            if (terminated or truncated) and i + 1 < env_steps:
                episode, step = episode + 1, 0
                obs, _ = env.reset(seed=seed + episode)
    finally:
        env.close()
    frame = pd.DataFrame(rows)
    # next_action is the logged action of the following row (None on terminal rows).
    following = frame.groupby("mdp_id", sort=False)["action"].shift(-1)
    frame["next_action"] = following.where(frame["not_terminal"], None)
    return frame


def evaluate_discrete_onnx(onnx_bytes: bytes, make_env: EnvFactory, episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of the greedy exported Q-network over `episodes` seeded episodes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    n_actions = (
        int(session.get_outputs()[0].shape[1]) if isinstance(session.get_outputs()[0].shape[1], int) else None
    )
    env = make_env()
    n_actions = n_actions or int(env.action_space.n)
    mask = np.ones((1, n_actions), np.float32)
    scores = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                (q,) = session.run(
                    [Q_OUTPUT], {FEATURES_INPUT: np.asarray(obs, np.float32)[None], MASK_INPUT: mask}
                )
                obs, reward, terminated, truncated, _ = env.step(int(np.argmax(q[0])))
                total += float(reward)
                done = terminated or truncated
            scores.append(total)
    finally:
        env.close()
    return scores


def _check_spaces(env: gym.Env, feature_names: Sequence[str], actions: Sequence[str]) -> None:
    if not isinstance(env.action_space, gym.spaces.Discrete) or int(env.action_space.n) != len(actions):
        raise GymDiscreteError(
            f"env action space {env.action_space} does not fit actions {list(actions)}; "
            "a discrete loop needs Discrete(n) with one name per action"
        )
    shape = getattr(env.observation_space, "shape", None)
    if shape is None or len(shape) != 1 or shape[0] != len(feature_names):
        raise GymDiscreteError(
            f"env observation space {env.observation_space} does not fit feature names {list(feature_names)}; "
            "pass one name per observation dimension"
        )
