"""Off-policy DQN on logged timelines: the Q-network and the training loop, top to bottom.

The network owns its normalization (`features.NormalizationModule`), so the exported
graph takes raw features with NaN for missing, exactly what serving has at hand.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from features import NormalizationModule, NormalizationSpec
from trainer._minibatch_loop import EpochLoop, ModulesAndOptimizers, StepHook, run_epochs
from trainer.artifact import DataRange
from trainer.checkpoint import CheckpointConfig
from trainer.config import DqnConfig
from trainer.cql import CqlConfig, conservative_penalty
from trainer.data import TransitionTensors
from trainer.distributed import SINGLE_PROCESS, DistributedContext, ForwardOf, MinibatchShard
from trainer.parquet_data import PreparedTimelines, training_data_range, training_transitions


class QNetwork(nn.Module):
    """raw features [B, F] → normalization → MLP → (dueling) head → Q [B, A]."""

    def __init__(self, spec: NormalizationSpec, n_actions: int, hidden_sizes: Sequence[int], dueling: bool):
        super().__init__()
        self.n_features = len(spec.feature_names)
        self.n_actions = n_actions
        self.normalization = NormalizationModule(spec)
        for parameter in self.normalization.parameters():
            parameter.requires_grad_(False)
        layers: list[nn.Module] = []
        width = int(spec.output_dim)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers)
        self.dueling = dueling
        self.advantage = nn.Linear(width, n_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def q_all(self, features_raw: torch.Tensor) -> torch.Tensor:
        """Q for every action, ignoring which are possible (training targets index into it)."""
        hidden = self.body(self.normalization(features_raw))
        advantage = self.advantage(hidden)
        if self.value is None:
            return advantage
        return self.value(hidden) + advantage - advantage.mean(dim=1, keepdim=True)

    def forward(self, features_raw: torch.Tensor, possible_mask: torch.Tensor) -> torch.Tensor:
        """Q-values with impossible actions set to -inf, so no argmax or softmax can pick them."""
        q = self.q_all(features_raw)
        return torch.where(possible_mask > 0.5, q, torch.full_like(q, -math.inf))


@dataclass(frozen=True)
class TrainingResult:
    """A trained network plus what the registry records about how it was trained."""

    network: QNetwork
    feature_names: list[str]
    actions: list[str]
    metrics: dict[str, float]
    data_range: DataRange
    history: list[dict[str, float]] = field(default_factory=list)
    transitions_per_s: float = 0.0  # mean over this call's epochs (global: all processes together)


def train_dqn(
    timelines: pd.DataFrame | PreparedTimelines,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: DqnConfig,
    log_dir: Path,
    *,
    checkpoint: CheckpointConfig | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    on_step: StepHook | None = None,
) -> TrainingResult:
    """Fit Q(s, a) to logged transitions; log per-epoch metrics to tensorboardX under `log_dir`.

    Also trains CQL: a `CqlConfig` adds its conservative penalty to every row's TD loss.
    `timelines` may come already as tensors (`trainer.parquet_data.stream_transitions`).

    Seeded and deterministic on CPU: the same timelines and config give the same weights, for
    any number of processes (`distributed`, see trainer.distributed) up to float rounding, and
    across a kill and resume from `checkpoint`. `on_step(global_step)` runs after every optimizer
    step (and after any checkpoint of that step); an exception from it stops training.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(timelines, spec, list(actions), config, log_dir, checkpoint, distributed, on_step)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    timelines: pd.DataFrame | PreparedTimelines,
    spec: NormalizationSpec,
    actions: list[str],
    config: DqnConfig,
    log_dir: Path,
    checkpoint: CheckpointConfig | None,
    ctx: DistributedContext,
    on_step: StepHook | None,
) -> TrainingResult:
    feature_names = list(spec.feature_names)
    cpu_data = training_transitions(
        timelines, feature_names, actions, config.gamma, config.reward_clip, config.n_step
    )
    device = ctx.torch_device
    data = _to_device(cpu_data, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = QNetwork(spec, len(actions), config.hidden_sizes, config.dueling).to(device)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    state_q = ctx.wrap(ForwardOf(network, "q_all"))  # Q of the logged states: the one forward with gradients
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )

    def step(shard: MinibatchShard) -> dict[str, float]:
        rows = shard.rows.to(device)
        squared, row_loss = _row_losses(state_q, network, target, data, rows, config)
        loss = row_loss.sum() * shard.loss_scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _soft_update(target, network, config.target_update_tau)
        return {"train/td_loss": float(squared.detach().sum()) * shard.loss_scale}

    def epoch_metrics() -> dict[str, float]:
        return {
            "train/learning_rate": float(optimizer.param_groups[0]["lr"]),
            **_epoch_metrics(network, data, actions),
        }

    loop = EpochLoop.from_config(
        config,
        spec,
        (cpu_data.states, cpu_data.next_states, cpu_data.actions, cpu_data.rewards),
        n_rows=data.n_rows,
        shown=("train/td_loss",),
        actions=actions,
    )
    throughput: list[float] = []
    history = run_epochs(
        loop,
        ModulesAndOptimizers({"online": network, "target": target}, {"optimizer": optimizer}),
        step,
        ctx,
        checkpoint=checkpoint,
        log_dir=log_dir,
        on_step=on_step,
        epoch_metrics=epoch_metrics,
        throughput=throughput,
    )
    network.eval()
    return TrainingResult(
        network=network.cpu(),
        feature_names=feature_names,
        actions=actions,
        metrics=dict(history[-1]) if history else {},
        data_range=training_data_range(timelines),
        history=history,
        transitions_per_s=float(np.mean(throughput)) if throughput else 0.0,
    )


def _row_losses(
    state_q: nn.Module,
    network: QNetwork,
    target: QNetwork,
    data: TransitionTensors,
    rows: torch.Tensor,
    config: DqnConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared Bellman errors, loss per row) on one minibatch; the loss adds CQL's penalty if set.

    Double-Q picks a' with the online network; `data.discounts` is γ (γ^m for n-step targets).
    """
    q_all = state_q(data.states[rows])
    q_taken = q_all.gather(1, data.actions[rows][:, None]).squeeze(1)
    with torch.no_grad():
        next_mask = data.possible_next_mask[rows]
        has_next = next_mask.sum(dim=1) > 0
        target_q = target(data.next_states[rows], next_mask)
        if config.double_q:
            best = network(data.next_states[rows], next_mask).argmax(dim=1, keepdim=True)
            next_value = target_q.gather(1, best).squeeze(1)
        else:
            next_value = target_q.max(dim=1).values
        next_value = torch.where(has_next, next_value, torch.zeros_like(next_value))
        y = data.rewards[rows] + data.discounts[rows] * data.not_terminal[rows] * next_value
    squared = (q_taken - y) ** 2
    if isinstance(config, CqlConfig):
        penalty = conservative_penalty(q_all, data.actions[rows], data.possible_mask[rows])
        return squared, squared + config.cql_alpha * penalty
    return squared, squared


def _to_device(data: TransitionTensors, device: torch.device) -> TransitionTensors:
    if device.type == "cpu":
        return data
    return dataclasses.replace(
        data, **{f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)}
    )


def _soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


def _epoch_metrics(network: QNetwork, data: TransitionTensors, actions: list[str]) -> dict[str, float]:
    """MC loss (REFERENCE §3), mean and std of Q per action and model-vs-logged action shares, on all rows."""
    with torch.no_grad():
        q = network(data.states, data.possible_mask)
    q_logged = q.gather(1, data.actions[:, None]).squeeze(1)
    metrics = {"train/mc_loss": float(torch.mean(torch.abs(data.mc_returns - q_logged)))}
    greedy = q.argmax(dim=1)
    for i, name in enumerate(actions):
        possible = data.possible_mask[:, i] > 0.5
        if bool(possible.any()):
            metrics[f"train/q_mean/{name}"] = float(q[possible, i].mean())
            metrics[f"train/q_std/{name}"] = float(q[possible, i].std(correction=0))
        metrics[f"train/model_action_share/{name}"] = float((greedy == i).float().mean())
        metrics[f"train/logged_action_share/{name}"] = float((data.actions == i).float().mean())
    return metrics
