"""Closed loops on Gymnasium environments for continuous-action learners, scored through ONNX.

Offline: a behaviour policy logs timeline-shaped rows (`collect_timelines`), SAC/TD3 train on
them (`train_continuous`), the actor is exported and scored. Online (`run_online`): the exported
ONNX policy collects `steps_per_round` steps with exploration noise into a replay buffer, the
learner does that many updates, the actor is re-exported, and so on. Every score is the return
of the exported graph under onnxruntime (`evaluate_onnx_policy`), never of the torch module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from tensorboardX import SummaryWriter

from features import NormalizationSpec, fit_normalization
from trainer._progress import step_bar
from trainer.continuous import ReplayBuffer, build_learner, normalized_transitions, to_unit
from trainer.continuous_export import ContinuousOnnxPolicy, export_continuous_policy
from trainer.errors import TrainerError
from trainer.sac import SacConfig
from trainer.td3 import Td3Config

#: The continuous-action algorithm configs, discriminated on `type`.
ContinuousAlgorithmConfig = Annotated[SacConfig | Td3Config, Field(discriminator="type")]

EnvFactory = Callable[[], gym.Env]
#: A behaviour policy for offline logging: (raw observation [F], rng) → action in env units [A].
BehaviourPolicy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class GymLoopError(TrainerError):
    """A Gym loop that cannot run: the env's spaces do not fit the algorithm config."""


class OnlineLoopConfig(BaseModel):
    """How the online loop interleaves acting (through ONNX), learning and re-exporting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    env_id: str = "Pendulum-v1"
    total_env_steps: int = Field(20_000, ge=1)
    warmup_steps: int = Field(1_000, ge=1, description="uniform random actions before the first export")
    steps_per_round: int = Field(200, ge=1, description="env steps between re-exports")
    updates_per_step: float = Field(1.0, gt=0.0)
    replay_capacity: int = Field(100_000, ge=1)
    eval_episodes: int = Field(20, ge=1)
    eval_every_steps: int | None = Field(None, ge=1, description="also score mid-run; None = only at the end")
    seed: int = 0


@dataclass(frozen=True)
class LoopResult:
    """The final exported policy, its scores and what it cost."""

    onnx_bytes: bytes
    spec: NormalizationSpec
    scores: list[float]
    env_steps: int
    wall_s: float
    train_s: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores))


def feature_names_for(env: gym.Env) -> list[str]:
    return [f"obs_{i}" for i in range(_box(env.observation_space, "observation").shape[0])]


def action_names_for(env: gym.Env) -> list[str]:
    return [f"action_{i}" for i in range(_box(env.action_space, "action").shape[0])]


def env_action_bounds(env: gym.Env) -> tuple[list[float], list[float]]:
    space = _box(env.action_space, "action")
    return [float(v) for v in space.low], [float(v) for v in space.high]


def evaluate_onnx_policy(
    onnx_bytes: bytes,
    make_env: EnvFactory,
    episodes: int,
    seed: int,
    action_bounds: tuple[list[float], list[float]],
) -> list[float]:
    """Undiscounted returns of the greedy exported policy over `episodes` seeded episodes."""
    policy = ContinuousOnnxPolicy(onnx_bytes, *action_bounds)
    env = make_env()
    scores = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                action = policy.greedy(np.asarray(obs, np.float32)[None])[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            scores.append(total)
    finally:
        env.close()
    return scores


def collect_timelines(
    make_env: EnvFactory, behaviour: BehaviourPolicy, env_steps: int, seed: int
) -> pd.DataFrame:
    """Log `env_steps` steps of `behaviour` as timeline rows with an `action_vector` column.

    Follows the timeline contract: the last step of each episode is terminal (empty next state),
    also when the episode was truncated by a time limit; an episode cut off by `env_steps` is dropped.
    """
    env = make_env()
    names = feature_names_for(env)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    episode, episode_rows = 0, []
    obs, _ = env.reset(seed=seed)
    try:
        for _ in range(env_steps):
            action = np.asarray(behaviour(np.asarray(obs, np.float32), rng), np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            episode_rows.append(
                {
                    "mdp_id": f"episode-{seed}-{episode}",
                    "sequence_number": len(episode_rows),
                    "sequence_number_ordinal": len(episode_rows) + 1,
                    "state_features": dict(zip(names, map(float, obs), strict=True)),
                    "action_vector": [float(v) for v in action],
                    "reward": float(reward),
                    "next_state_features": {}
                    if done
                    else dict(zip(names, map(float, next_obs), strict=True)),
                    "not_terminal": not done,
                    "time_diff": 0 if done else 1,
                }
            )
            obs = next_obs
            if done:
                rows += episode_rows
                episode, episode_rows = episode + 1, []
                obs, _ = env.reset(seed=seed + episode)
    finally:
        env.close()
    return pd.DataFrame(rows)


def run_online(
    algorithm: SacConfig | Td3Config,
    loop: OnlineLoopConfig,
    log_dir: Path,
    make_env: EnvFactory | None = None,
) -> LoopResult:
    """Learn online through the served (ONNX) policy; scores the last export over `eval_episodes`."""
    make_env = make_env or (lambda: gym.make(loop.env_id))
    started = time.perf_counter()
    env = make_env()
    bounds = env_action_bounds(env)
    _check_bounds(algorithm, bounds, loop.env_id)
    names = feature_names_for(env)
    rng = np.random.default_rng(loop.seed)
    env.action_space.seed(loop.seed)
    buffer = ReplayBuffer(len(names), algorithm.action_dim, loop.replay_capacity, seed=loop.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(algorithm.num_threads)
    train_s = 0.0
    history: list[dict[str, float]] = []
    try:
        state = _Stepper(env, loop.seed)
        for _ in range(min(loop.warmup_steps, loop.total_env_steps)):
            state.step(buffer, env.action_space.sample(), bounds)
        spec = fit_normalization(pd.DataFrame(buffer.states(), columns=names))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(algorithm.seed)
            learner = build_learner(spec, algorithm)
            onnx_bytes = export_continuous_policy(learner.actor, seed=loop.seed)  # parity-checked once
            next_eval = loop.eval_every_steps
            env_steps = step_bar(
                total=loop.total_env_steps, initial=state.env_steps, desc=f"{loop.env_id} online", unit="step"
            )
            with SummaryWriter(str(log_dir)) as writer, env_steps:
                while state.env_steps < loop.total_env_steps:
                    policy = ContinuousOnnxPolicy(onnx_bytes, *bounds)
                    round_steps = min(loop.steps_per_round, loop.total_env_steps - state.env_steps)
                    for _ in range(round_steps):
                        action = policy.sample(state.obs[None], rng)[0]
                        state.step(buffer, action, bounds)
                    env_steps.update(round_steps)
                    tick = time.perf_counter()
                    updates = max(1, round(loop.steps_per_round * loop.updates_per_step))
                    metrics: dict[str, list[float]] = {}
                    for _ in range(updates):
                        batch = normalized_transitions(learner.actor, buffer.sample(algorithm.batch_size))
                        for name, value in learner.update(batch).items():
                            metrics.setdefault(name, []).append(value)
                    onnx_bytes = export_continuous_policy(learner.actor, check=False)
                    learner.actor.train()
                    train_s += time.perf_counter() - tick
                    for name, values in metrics.items():
                        writer.add_scalar(name, float(np.mean(values)), state.env_steps)
                    for value in state.drain_returns():
                        writer.add_scalar("rollout/episode_return", value, state.env_steps)
                    if next_eval is not None and state.env_steps >= next_eval:
                        scores = evaluate_onnx_policy(
                            onnx_bytes, make_env, loop.eval_episodes, 10_000, bounds
                        )
                        writer.add_scalar("eval/mean_score", float(np.mean(scores)), state.env_steps)
                        history.append(
                            {"env_steps": float(state.env_steps), "eval/mean_score": float(np.mean(scores))}
                        )
                        env_steps.set_postfix(score=f"{np.mean(scores):.0f}", refresh=False)
                        next_eval += loop.eval_every_steps
    finally:
        torch.set_num_threads(previous_threads)
        env.close()
    scores = evaluate_onnx_policy(onnx_bytes, make_env, loop.eval_episodes, 10_000, bounds)
    return LoopResult(
        onnx_bytes=onnx_bytes,
        spec=spec,
        scores=scores,
        env_steps=state.env_steps,
        wall_s=time.perf_counter() - started,
        train_s=train_s,
        history=history,
    )


class _Stepper:
    """The env's current observation and episode bookkeeping; every step lands in the buffer."""

    def __init__(self, env: gym.Env, seed: int):
        self.env, self.seed = env, seed
        self.episode = 0
        self.env_steps = 0
        self.obs = np.asarray(env.reset(seed=seed)[0], np.float32)
        self._return = 0.0
        self._returns: list[float] = []

    def step(
        self, buffer: ReplayBuffer, action: np.ndarray, bounds: tuple[Sequence[float], Sequence[float]]
    ) -> None:
        next_obs, reward, terminated, truncated, _ = self.env.step(np.asarray(action, np.float32))
        next_obs = np.asarray(next_obs, np.float32)
        # Truncation (time limit) is not a terminal state: keep bootstrapping from next_obs.
        buffer.add(self.obs, to_unit(action[None], *bounds)[0], float(reward), next_obs, not terminated)
        self.env_steps += 1
        self._return += float(reward)
        if terminated or truncated:
            self._returns.append(self._return)
            self._return = 0.0
            self.episode += 1
            next_obs = np.asarray(self.env.reset(seed=self.seed + self.episode)[0], np.float32)
        self.obs = next_obs

    def drain_returns(self) -> list[float]:
        returns, self._returns = self._returns, []
        return returns


def _box(space: gym.Space, what: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise GymLoopError(
            f"the {what} space must be a 1-D gymnasium Box for continuous-action learners, got {space}"
        )
    return space


def _check_bounds(
    algorithm: SacConfig | Td3Config, bounds: tuple[list[float], list[float]], env_id: str
) -> None:
    if not (np.allclose(algorithm.action_low, bounds[0]) and np.allclose(algorithm.action_high, bounds[1])):
        raise GymLoopError(
            f"config action bounds [{algorithm.action_low}, {algorithm.action_high}] differ from env "
            f"{env_id!r}'s action space [{bounds[0]}, {bounds[1]}]; build the config with "
            "trainer.gym_loop.env_action_bounds(env)"
        )
