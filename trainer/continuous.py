"""What SAC and TD3 share: continuous-action data, action scaling, networks and the offline fit loop.

Continuous actions travel in timelines as an extra column `action_vector: list[float]` in env
units (one entry per action dimension, in `actions` order); the discrete `action` column is
ignored. Networks work in the unit box (−1, 1) (CONTINUOUS_ACTION semantics, REFERENCE §2):
logged actions are mapped there once when the transitions are built, and the exported graph maps
back to [low, high]. States stay raw (NaN = missing) until one `NormalizationModule` per learner
normalizes a whole minibatch; the same module is baked into the exported actor.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from features import NormalizationModule, NormalizationSpec, build_feature_matrix
from features.spec import ACTION_EPS
from trainer._minibatch_loop import EpochLoop, run_epochs
from trainer.artifact import DataRange
from trainer.checkpoint import CheckpointConfig
from trainer.data import checked_rewards, describe_rows, feature_maps
from trainer.distributed import SINGLE_PROCESS, DistributedContext, MinibatchShard
from trainer.errors import TrainerError, TrainingDataError
from trainer.parametric_data import timeline_data_range

ACTION_VECTOR_COLUMN = "action_vector"
REQUIRED_COLUMNS = (
    "mdp_id",
    "sequence_number",
    "state_features",
    ACTION_VECTOR_COLUMN,
    "reward",
    "next_state_features",
    "not_terminal",
)


class ContinuousConfig(BaseModel):
    """Fields every continuous-action algorithm has; each algorithm's config adds its `type` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    action_low: list[float] = Field(min_length=1, description="env lower bound per action dimension")
    action_high: list[float] = Field(min_length=1, description="env upper bound per action dimension")
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    hidden_sizes: list[int] = Field(default_factory=lambda: [256, 256])
    actor_learning_rate: float = Field(3e-4, gt=0.0)
    critic_learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(256, ge=1)
    num_epochs: int = Field(20, ge=1, description="passes over logged timelines (offline training)")
    target_update_tau: float = Field(0.005, gt=0.0, le=1.0)
    reward_clip: float | None = Field(None, gt=0.0, description="clip rewards to [-c, c]; None = no clipping")
    seed: int = 0
    device: Literal["cpu"] = "cpu"
    num_threads: int = Field(
        1, ge=1, description="torch intra-op threads while training (small MLPs: 1 is fastest)"
    )

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"hidden_sizes must all be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ContinuousConfig:
        low, high = self.action_low, self.action_high
        if len(low) != len(high):
            raise ValueError(
                f"action_low {low} and action_high {high} need one entry per action dimension each"
            )
        bad = [
            i
            for i, (lo, hi) in enumerate(zip(low, high, strict=True))
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo)
        ]
        if bad:
            raise ValueError(
                f"action bounds must be finite with low < high; dimension(s) {bad} have "
                f"low={[low[i] for i in bad]} high={[high[i] for i in bad]}"
            )
        return self

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


# --- action scaling (CONTINUOUS_ACTION semantics) ---------------------------------------------


def to_unit(actions: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """Env units [low, high] → (−1 + ε, 1 − ε), clamped, so atanh of a logged action stays finite."""
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    unit = (np.asarray(actions, np.float64) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(unit, -1.0 + ACTION_EPS, 1.0 - ACTION_EPS).astype(np.float32)


def to_env(unit: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """(−1, 1) → env units [low, high] (inverse of `to_unit` inside the box)."""
    lo, hi = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return (lo + (np.asarray(unit, np.float32) + 1.0) * 0.5 * (hi - lo)).astype(np.float32)


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContinuousTransitions:
    """One logged step per row; actions already in the unit box. States are raw as built, and
    normalized (`normalized_transitions`) before a learner's `update` sees them."""

    states: torch.Tensor  # float32 [N, F] raw, NaN = missing
    actions: torch.Tensor  # float32 [N, A] in (−1, 1)
    rewards: torch.Tensor  # float32 [N]
    next_states: torch.Tensor  # float32 [N, F] raw; all NaN on terminal rows
    not_terminal: torch.Tensor  # float32 [N] 1 = bootstrap from next_states

    @property
    def n_rows(self) -> int:
        return int(self.rewards.shape[0])

    def take(self, rows: torch.Tensor) -> ContinuousTransitions:
        return ContinuousTransitions(
            self.states[rows],
            self.actions[rows],
            self.rewards[rows],
            self.next_states[rows],
            self.not_terminal[rows],
        )


def build_continuous_transitions(
    timelines: pd.DataFrame,
    feature_names: Sequence[str],
    actions: Sequence[str],
    config: ContinuousConfig,
) -> ContinuousTransitions:
    """Validate timelines with an `action_vector` column and build tensors; errors name the rows."""
    missing = [c for c in REQUIRED_COLUMNS if c not in timelines.columns]
    if missing:
        raise TrainingDataError(
            f"timelines lack columns {missing} (have {sorted(timelines.columns)}); continuous-action "
            f"timelines need `{ACTION_VECTOR_COLUMN}` (list[float] in env units, one per action dimension)",
            column=missing[0],
        )
    if len(timelines) == 0:
        raise TrainingDataError("timelines are empty; nothing to train on (check the date range loaded)")
    if len(actions) != config.action_dim or len(set(actions)) != len(actions):
        raise TrainingDataError(
            f"actions {list(actions)} must name each of the {config.action_dim} action dimensions of "
            f"action_low/action_high exactly once"
        )
    frame = timelines.reset_index(drop=True)
    vectors = [
        np.asarray([] if v is None else v, dtype=np.float64).ravel() for v in frame[ACTION_VECTOR_COLUMN]
    ]
    wrong = [i for i, v in enumerate(vectors) if v.shape != (config.action_dim,) or not np.isfinite(v).all()]
    if wrong:
        raise TrainingDataError(
            f"{ACTION_VECTOR_COLUMN} must hold {config.action_dim} finite floats; rows "
            f"{describe_rows(frame, wrong)} do not; fix the logging app or drop these rows",
            column=ACTION_VECTOR_COLUMN,
            rows=wrong,
        )
    logged = np.stack(vectors)
    lo, hi = np.asarray(config.action_low), np.asarray(config.action_high)
    outside = np.flatnonzero(((logged < lo) | (logged > hi)).any(axis=1))
    if len(outside):
        raise TrainingDataError(
            f"{ACTION_VECTOR_COLUMN} outside [action_low, action_high] = [{config.action_low}, "
            f"{config.action_high}] in rows {describe_rows(frame, outside)}; widen the bounds in the config",
            column=ACTION_VECTOR_COLUMN,
            rows=outside.tolist(),
        )
    rewards = checked_rewards(frame, config.reward_clip)
    names = list(feature_names)
    states = build_feature_matrix(feature_maps(frame["state_features"]), names)
    next_states = build_feature_matrix(feature_maps(frame["next_state_features"]), names)
    return ContinuousTransitions(
        states=torch.as_tensor(np.asarray(states, dtype=np.float32)),
        actions=torch.as_tensor(to_unit(logged, config.action_low, config.action_high)),
        rewards=torch.as_tensor(rewards.astype(np.float32)),
        next_states=torch.as_tensor(np.asarray(next_states, dtype=np.float32)),
        not_terminal=torch.as_tensor(frame["not_terminal"].to_numpy(dtype=bool).astype(np.float32)),
    )


class ReplayBuffer:
    """Fixed-capacity ring of raw transitions for the online loop; samples uniformly."""

    def __init__(self, n_features: int, action_dim: int, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self._states = np.zeros((capacity, n_features), np.float32)
        self._next_states = np.zeros((capacity, n_features), np.float32)
        self._actions = np.zeros((capacity, action_dim), np.float32)
        self._rewards = np.zeros(capacity, np.float32)
        self._not_terminal = np.zeros(capacity, np.float32)
        self._size = 0
        self._cursor = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        state: np.ndarray,
        unit_action: np.ndarray,
        reward: float,
        next_state: np.ndarray,
        not_terminal: bool,
    ) -> None:
        i = self._cursor
        self._states[i], self._actions[i], self._rewards[i] = state, unit_action, reward
        self._next_states[i], self._not_terminal[i] = next_state, float(not_terminal)
        self._cursor = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int) -> ContinuousTransitions:
        rows = self._rng.integers(0, self._size, size=batch_size)
        return ContinuousTransitions(
            states=torch.from_numpy(self._states[rows]),
            actions=torch.from_numpy(self._actions[rows]),
            rewards=torch.from_numpy(self._rewards[rows]),
            next_states=torch.from_numpy(self._next_states[rows]),
            not_terminal=torch.from_numpy(self._not_terminal[rows]),
        )

    def states(self) -> np.ndarray:
        """Raw states held so far (to fit a normalization spec on)."""
        return self._states[: self._size].copy()


# --- networks ---------------------------------------------------------------------------------


def mlp(width_in: int, hidden_sizes: Sequence[int], width_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = width_in
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, width_out))
    return nn.Sequential(*layers)


class ContinuousActor(nn.Module):
    """raw features → normalization → pre-squash Gaussian (loc, log_std) → greedy action in env units.

    Subclasses define `distribution(normalized)`; `forward` is the exported ONNX contract
    (`trainer.artifact.CONTINUOUS_OUTPUTS`): (action_mean, action_loc, action_log_std).
    """

    def __init__(self, spec: NormalizationSpec, action_low: Sequence[float], action_high: Sequence[float]):
        super().__init__()
        self.n_features = len(spec.feature_names)
        self.action_dim = len(action_low)
        self.normalization = NormalizationModule(spec)
        self.normalization.requires_grad_(False)
        low = torch.tensor(list(action_low), dtype=torch.float32)
        high = torch.tensor(list(action_high), dtype=torch.float32)
        self.register_buffer("action_low", low)
        self.register_buffer("action_half_range", (high - low) / 2.0)

    def distribution(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to_env_units(self, unit: torch.Tensor) -> torch.Tensor:
        return self.action_low + (unit + 1.0) * self.action_half_range

    def forward(self, features_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, log_std = self.distribution(self.normalization(features_raw))
        return self.to_env_units(torch.tanh(loc)), loc, log_std


class TwinCritic(nn.Module):
    """Two independent Q(s, a) heads on (normalized state, unit action); targets use their minimum."""

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: Sequence[int]):
        super().__init__()
        self.q1 = mlp(state_dim + action_dim, hidden_sizes, 1)
        self.q2 = mlp(state_dim + action_dim, hidden_sizes, 1)

    def forward(
        self, normalized: torch.Tensor, unit_action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([normalized, unit_action], dim=1)
        return self.q1(x).squeeze(1), self.q2(x).squeeze(1)


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


# --- learners and offline training --------------------------------------------------------------


class ContinuousLearner(Protocol):
    """One algorithm's networks and optimizers; `update` is one gradient step on a minibatch.

    `update(batch, shard)` takes this process's rows, their states already through the actor's
    normalization (`normalized_transitions`), and their `MinibatchShard` (None: the whole batch in
    one process, as the online Gym loop uses it) and returns metrics, each this process's share of
    the global batch's value. `state_dict`/`load_state_dict` cover everything a resumed
    run needs (networks, targets, optimizers, counters) as plain tensors and numbers.
    """

    actor: ContinuousActor

    def update(
        self, batch: ContinuousTransitions, shard: MinibatchShard | None = None
    ) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def normalized_transitions(actor: ContinuousActor, batch: ContinuousTransitions) -> ContinuousTransitions:
    """`batch` with states and next states through the actor's (frozen) normalization: what a
    learner's `update` takes. The normalization is a fixed row-wise function of the spec, so the
    offline loop runs it once on every row instead of on every minibatch; the online loop runs it
    on each batch it samples from its growing buffer."""
    with torch.no_grad():
        return dataclasses.replace(
            batch,
            states=actor.normalization(batch.states),
            next_states=actor.normalization(batch.next_states),
        )


#: `type` → learner class, imported lazily (one line per algorithm; no registration by import).
LEARNERS = {"sac": "trainer.sac:SacLearner", "td3": "trainer.td3:Td3Learner"}


def build_learner(
    spec: NormalizationSpec, config: ContinuousConfig, distributed: DistributedContext = SINGLE_PROCESS
) -> ContinuousLearner:
    """The learner for `config.type` (a `SacConfig` or `Td3Config`), its networks DDP-wrapped when
    `distributed` has peers."""
    algorithm = getattr(config, "type", None)
    if algorithm not in LEARNERS:
        raise TrainerError(
            f"no continuous-action learner for config type {algorithm!r}; expected one of {sorted(LEARNERS)}"
        )
    module, name = LEARNERS[algorithm].split(":")
    return getattr(importlib.import_module(module), name)(spec, config, distributed)


def update_twin_critic(
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: torch.Tensor,
    actions: torch.Tensor,
    target: torch.Tensor,
    loss_scale: float,
) -> dict[str, float]:
    """One gradient step of both critics towards the same target (SAC's and TD3's clipped double Q).

    `critic` may be DDP-wrapped; the loss is the row sum times `loss_scale` (see `MinibatchShard`).
    """
    q1, q2 = critic(state, actions)
    loss = (((q1 - target) ** 2) + ((q2 - target) ** 2)).sum() * loss_scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "train/critic_loss": float(loss.detach()),
        "train/q_mean": float(q1.detach().sum() * loss_scale),
    }


@dataclass(frozen=True)
class ContinuousTrainingResult:
    """A trained actor (what is exported) plus what the registry records about the training."""

    network: ContinuousActor
    feature_names: list[str]
    actions: list[str]
    metrics: dict[str, float]
    data_range: DataRange
    history: list[dict[str, float]] = field(default_factory=list)


def train_continuous(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: ContinuousConfig,
    log_dir: Path | None,
    *,
    checkpoint: CheckpointConfig | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    on_step: Callable[[int], None] | None = None,
) -> ContinuousTrainingResult:
    """Off-policy fit on logged timelines: `num_epochs` shuffled passes, one update per minibatch.

    Takes the keyword arguments of `trainer.algorithms.TRAIN_FUNCTIONS` entries, with DQN's
    guarantees (`trainer._minibatch_loop`): seeded and deterministic on CPU, the same weights for
    any number of processes (`distributed`) up to float rounding, and across a kill and resume
    from `checkpoint`. `on_step(global_step)` runs after every update (and after any checkpoint
    of that step); an exception from it stops training.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        data = build_continuous_transitions(timelines, spec.feature_names, actions, config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            learner = build_learner(spec, config, distributed)
            loop = EpochLoop.from_config(
                config,  # build_learner has checked its `type`
                spec,
                (data.states, data.actions, data.rewards, data.next_states, data.not_terminal),
                n_rows=data.n_rows,
                shown=("train/critic_loss", "train/actor_loss"),
                actions=actions,
            )

            normalized = normalized_transitions(learner.actor, data)  # once, not every minibatch

            def step(shard: MinibatchShard) -> dict[str, float]:
                return learner.update(normalized.take(shard.rows), shard)

            history = run_epochs(
                loop, learner, step, distributed, checkpoint=checkpoint, log_dir=log_dir, on_step=on_step
            )
    finally:
        torch.set_num_threads(previous_threads)
    learner.actor.eval()
    return ContinuousTrainingResult(
        network=learner.actor,
        feature_names=list(spec.feature_names),
        actions=list(actions),
        metrics=dict(history[-1]) if history else {},
        data_range=timeline_data_range(timelines),
        history=history,
    )
