"""Parametric-action DQN: Q(s, a) = MLP([normalized state | normalized action features]).

Actions are feature maps and the candidate set varies per step (recommendations: the items on
offer now). The double-Q target maximizes over the next step's candidates (padded + masked):
    y = r + γ·not_terminal·Q_target(s', argmax_{a' ∈ next candidates} Q_online(s', a')).
Timeline columns: `trainer.parametric_data`. ONNX contract: `trainer.artifact` (`scores`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from features import NormalizationConfig, NormalizationModule, NormalizationSpec
from trainer._minibatch_loop import EpochLoop, ModulesAndOptimizers, run_epochs
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    FEATURES_INPUT,
    SCORES_OUTPUT,
    DataRange,
)
from trainer.checkpoint import CheckpointConfig
from trainer.distributed import SINGLE_PROCESS, DistributedContext, ForwardOf, MinibatchShard
from trainer.graph_export import export_graph
from trainer.parametric_data import (
    ParametricTransitions,
    build_parametric_transitions,
    candidate_tensor,
    fit_action_normalization,
    timeline_data_range,
)

StepHook = Callable[[int], None]


class ParametricDqnConfig(BaseModel):
    """Hyper-parameters of parametric-action DQN; `action_normalization` fits the action-feature spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    type: Literal["parametric_dqn"] = "parametric_dqn"
    gamma: float = Field(0.9, ge=0.0, le=1.0)
    double_q: bool = True
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64])
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(128, ge=1)
    num_epochs: int = Field(20, ge=1)
    target_update_tau: float = Field(0.05, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    reward_clip: float | None = Field(None, gt=0.0)
    action_normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    seed: int = 0
    device: Literal["cpu"] = "cpu"
    num_threads: int = Field(1, ge=1)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"hidden_sizes must all be >= 1, got {value}")
        return value


class ParametricQNetwork(nn.Module):
    """(raw state [B, F], raw candidates [B, K, G], mask [B, K]) → scores [B, K], padding = -inf."""

    def __init__(
        self, state_spec: NormalizationSpec, action_spec: NormalizationSpec, hidden_sizes: Sequence[int]
    ):
        super().__init__()
        self.n_features = len(state_spec.feature_names)
        self.n_action_features = len(action_spec.feature_names)
        self.state_normalization = NormalizationModule(state_spec)
        self.action_normalization = NormalizationModule(action_spec)
        for parameter in [*self.state_normalization.parameters(), *self.action_normalization.parameters()]:
            parameter.requires_grad_(False)
        layers: list[nn.Module] = []
        width = int(state_spec.output_dim) + int(action_spec.output_dim)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))

    def q_pairs(self, states_raw: torch.Tensor, action_features_raw: torch.Tensor) -> torch.Tensor:
        """Q [N] of N (state, action) pairs."""
        return self.q_pairs_normalized(
            self.state_normalization(states_raw), self.action_normalization(action_features_raw)
        )

    def q_pairs_normalized(self, states: torch.Tensor, action_features: torch.Tensor) -> torch.Tensor:
        """`q_pairs` after the normalizations (training normalizes every logged row once, up front)."""
        return self.body(torch.cat([states, action_features], dim=1)).squeeze(1)

    def scores_normalized(
        self, states: torch.Tensor, candidates: torch.Tensor, candidate_mask: torch.Tensor
    ) -> torch.Tensor:
        """`forward` after the normalizations: normalized states [B, F'], candidates [B, K, G']."""
        k = candidates.shape[1]
        q = self.q_pairs_normalized(
            states.unsqueeze(1).expand(-1, k, -1).reshape(-1, states.shape[1]),
            candidates.reshape(-1, candidates.shape[2]),
        ).reshape(candidate_mask.shape)
        return torch.where(candidate_mask > 0.5, q, torch.full_like(q, -math.inf))

    def forward(
        self, features_raw: torch.Tensor, action_features_raw: torch.Tensor, candidate_mask: torch.Tensor
    ) -> torch.Tensor:
        k = action_features_raw.shape[1]
        states = features_raw.unsqueeze(1).expand(-1, k, -1).reshape(-1, features_raw.shape[1])
        candidates = action_features_raw.reshape(-1, action_features_raw.shape[2])
        q = self.q_pairs(states, candidates).reshape(candidate_mask.shape)
        return torch.where(candidate_mask > 0.5, q, torch.full_like(q, -math.inf))


@dataclass(frozen=True)
class ParametricTrainingResult:
    """A trained parametric Q-network plus what the registry records."""

    network: ParametricQNetwork
    feature_names: list[str]
    action_feature_names: list[str]
    action_spec: NormalizationSpec
    actions: list[str]
    metrics: dict[str, float]
    data_range: DataRange
    history: list[dict[str, float]] = field(default_factory=list)


def train_parametric_dqn(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str] | None,
    config: ParametricDqnConfig,
    log_dir: Path | None = None,
    *,
    checkpoint: CheckpointConfig | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    on_step: StepHook | None = None,
    action_spec: NormalizationSpec | None = None,
) -> ParametricTrainingResult:
    """Fit Q(s, a) on parametric timelines (the `TRAIN_FUNCTIONS` signature; `actions` is unused:
    candidates are feature maps, not a fixed list). The action spec is fitted on every offered
    candidate unless given.

    DQN's guarantees (`trainer._minibatch_loop`): seeded and deterministic on CPU, the same
    weights for any number of processes (`distributed`) up to float rounding, and across a kill
    and resume from `checkpoint`. `on_step(global_step)` runs after every optimizer step.
    """
    action_spec = action_spec or fit_action_normalization(timelines, config.action_normalization)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        network, history = _train(
            timelines, spec, action_spec, config, log_dir, checkpoint, distributed, on_step
        )
    finally:
        torch.set_num_threads(previous_threads)
    return ParametricTrainingResult(
        network=network,
        feature_names=list(spec.feature_names),
        action_feature_names=list(action_spec.feature_names),
        action_spec=action_spec,
        actions=[],  # candidates arrive with each request: a parametric model has no fixed action list
        metrics=dict(history[-1]) if history else {},
        data_range=timeline_data_range(timelines),
        history=history,
    )


def _train(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    action_spec: NormalizationSpec,
    config: ParametricDqnConfig,
    log_dir: Path | None,
    checkpoint: CheckpointConfig | None,
    ctx: DistributedContext,
    on_step: StepHook | None,
) -> tuple[ParametricQNetwork, list[dict[str, float]]]:
    data = build_parametric_transitions(
        timelines, list(spec.feature_names), list(action_spec.feature_names), config.reward_clip
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = ParametricQNetwork(spec, action_spec, config.hidden_sizes)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    normalized = _normalized_rows(network, data)
    pair_q = ctx.wrap(ForwardOf(network, "q_pairs_normalized"))  # the only forward that needs gradients
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )

    def step(shard: MinibatchShard) -> dict[str, float]:
        rows = shard.rows
        with torch.no_grad():
            y = data.rewards[rows] + config.gamma * data.not_terminal[rows] * _next_value(
                network,
                target,
                normalized.next_states[rows],
                normalized.next_candidates[rows],
                data.next_mask[rows],
                config,
            )
        q = pair_q(normalized.states[rows], normalized.action_features[rows])
        loss = ((q - y) ** 2).sum() * shard.loss_scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for online_p, target_p in zip(network.parameters(), target.parameters(), strict=True):
                target_p.lerp_(online_p, config.target_update_tau)
        return {"train/td_loss": float(loss.detach())}

    loop = EpochLoop.from_config(
        config,
        spec,
        (
            data.states,
            data.action_features,
            data.rewards,
            data.not_terminal,
            data.next_states,
            data.next_candidates,
            data.next_mask,
        ),
        n_rows=data.n_rows,
        shown=("train/td_loss",),
        action_spec=action_spec,
    )
    history = run_epochs(
        loop,
        ModulesAndOptimizers({"online": network, "target": target}, {"optimizer": optimizer}),
        step,
        ctx,
        checkpoint=checkpoint,
        log_dir=log_dir,
        on_step=on_step,
        epoch_metrics=lambda: _q_metrics(network, data.states, data.action_features),
    )
    return network.eval(), history


@dataclass(frozen=True, slots=True)
class _NormalizedRows:
    """The logged rows the update reads, normalized once: the normalizations are fixed row-wise
    functions of the specs, so this is the same math as normalizing every minibatch."""

    states: torch.Tensor  # [N, F']
    action_features: torch.Tensor  # [N, G']
    next_states: torch.Tensor  # [N, F']
    next_candidates: torch.Tensor  # [N, K, G'] (padding normalized too; the mask drops it)


def _normalized_rows(network: ParametricQNetwork, data: ParametricTransitions) -> _NormalizedRows:
    n, k, g = data.next_candidates.shape
    with torch.no_grad():
        return _NormalizedRows(
            states=network.state_normalization(data.states),
            action_features=network.action_normalization(data.action_features),
            next_states=network.state_normalization(data.next_states),
            next_candidates=network.action_normalization(data.next_candidates.reshape(n * k, g)).reshape(
                n, k, -1
            ),
        )


def _next_value(
    network: ParametricQNetwork,
    target: ParametricQNetwork,
    next_states: torch.Tensor,
    candidates: torch.Tensor,
    mask: torch.Tensor,
    config: ParametricDqnConfig,
) -> torch.Tensor:
    """max over next candidates (double Q: online picks, target scores); 0 where there are none.
    States and candidates come normalized."""
    target_scores = target.scores_normalized(next_states, candidates, mask)
    if config.double_q:
        best = network.scores_normalized(next_states, candidates, mask).argmax(dim=1, keepdim=True)
        value = target_scores.gather(1, best).squeeze(1)
    else:
        value = target_scores.max(dim=1).values
    return torch.where(mask.sum(dim=1) > 0, value, torch.zeros_like(value))


def _q_metrics(network: ParametricQNetwork, states: torch.Tensor, chosen: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        q = network.q_pairs(states, chosen)
    return {"train/q_logged_mean": float(q.mean()), "train/q_logged_std": float(q.std())}


def export_parametric_model(
    network: ParametricQNetwork,
    sample_features: np.ndarray | None = None,
    sample_candidates: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    seed: int = 0,
) -> bytes:
    """ONNX bytes of the parametric contract (dynamic batch and candidate count), parity ≤ 1e-4."""
    features, candidates, mask = parametric_parity_sample(
        network.n_features, network.n_action_features, seed=seed
    )
    if sample_features is not None and sample_candidates is not None and sample_mask is not None:
        k = max(candidates.shape[1], sample_candidates.shape[1])
        features = np.concatenate([sample_features, features])
        candidates = np.concatenate([_pad(sample_candidates, k), _pad(candidates, k)])
        mask = np.concatenate([_pad(sample_mask, k, 0.0), _pad(mask, k, 0.0)])
    return export_graph(
        network,
        {
            FEATURES_INPUT: features.astype(np.float32),
            ACTION_FEATURES_INPUT: candidates.astype(np.float32),
            CANDIDATE_MASK_INPUT: mask.astype(np.float32),
        },
        [SCORES_OUTPUT],
        {
            FEATURES_INPUT: {0: "batch"},
            ACTION_FEATURES_INPUT: {0: "batch", 1: "candidates"},
            CANDIDATE_MASK_INPUT: {0: "batch", 1: "candidates"},
            SCORES_OUTPUT: {0: "batch", 1: "candidates"},
        },
    )


def parametric_parity_sample(
    n_features: int, n_action_features: int, rows: int = 64, candidates: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random raw states and candidates with ~20% NaN, and masks with 1..K real candidates per row."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 3.0, size=(rows, n_features)).astype(np.float32)
    features[rng.random(features.shape) < 0.2] = np.nan
    cands = rng.normal(0.0, 3.0, size=(rows, candidates, n_action_features)).astype(np.float32)
    cands[rng.random(cands.shape) < 0.2] = np.nan
    counts = rng.integers(1, candidates + 1, size=rows)
    mask = (np.arange(candidates)[None, :] < counts[:, None]).astype(np.float32)
    cands[mask == 0] = np.nan
    return features, cands, mask


def candidates_from_timelines(
    candidate_lists: Sequence[object], action_feature_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX `action_features` and `candidate_mask` inputs for rows of candidate feature maps."""
    return candidate_tensor(candidate_lists, action_feature_names)  # type: ignore[arg-type]


def _pad(values: np.ndarray, k: int, fill: float = np.nan) -> np.ndarray:
    if values.shape[1] == k:
        return values
    pad = [(0, 0), (0, k - values.shape[1])] + [(0, 0)] * (values.ndim - 2)
    return np.pad(values, pad, constant_values=fill)
