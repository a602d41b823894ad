"""Off-policy DQN on logged timelines: the Q-network and the training loop, top to bottom.

The network owns its normalization (`features.NormalizationModule`), so the exported
graph takes raw features with NaN for missing, exactly what serving has at hand.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tensorboardX import SummaryWriter
from torch import nn

from features import NormalizationModule, NormalizationSpec
from trainer.artifact import DataRange
from trainer.config import DqnConfig
from trainer.data import TransitionTensors, build_transitions


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


def train_dqn(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: DqnConfig,
    log_dir: Path,
) -> TrainingResult:
    """Fit Q(s, a) to logged transitions; log per-epoch metrics to tensorboardX under `log_dir`.

    Seeded and deterministic on CPU: the same timelines and config give the same weights.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(timelines, spec, list(actions), config, log_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    timelines: pd.DataFrame, spec: NormalizationSpec, actions: list[str], config: DqnConfig, log_dir: Path
) -> TrainingResult:
    feature_names = list(spec.feature_names)
    data = build_transitions(timelines, feature_names, actions, config.gamma, config.reward_clip)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = QNetwork(spec, len(actions), config.hidden_sizes, config.dueling)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    shuffle = torch.Generator().manual_seed(config.seed)

    history: list[dict[str, float]] = []
    with SummaryWriter(str(log_dir)) as writer:
        for epoch in range(config.num_epochs):
            td_losses: list[float] = []
            for rows in torch.randperm(data.n_rows, generator=shuffle).split(config.batch_size):
                loss = _td_loss(network, target, data, rows, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _soft_update(target, network, config.target_update_tau)
                td_losses.append(float(loss.detach()))
            metrics = {"train/td_loss": float(np.mean(td_losses))}
            metrics.update(_epoch_metrics(network, data, actions))
            for name, value in metrics.items():
                writer.add_scalar(name, value, epoch)
            history.append(metrics)

    network.eval()
    return TrainingResult(
        network=network,
        feature_names=feature_names,
        actions=actions,
        metrics=dict(history[-1]),
        data_range=_data_range(timelines),
        history=history,
    )


def _td_loss(
    network: QNetwork, target: QNetwork, data: TransitionTensors, rows: torch.Tensor, config: DqnConfig
) -> torch.Tensor:
    """Mean squared Bellman error on one minibatch; double-Q picks a' with the online network."""
    q_taken = network.q_all(data.states[rows]).gather(1, data.actions[rows, None]).squeeze(1)
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
        y = data.rewards[rows] + config.gamma * data.not_terminal[rows] * next_value
    return torch.mean((q_taken - y) ** 2)


def _soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


def _epoch_metrics(network: QNetwork, data: TransitionTensors, actions: list[str]) -> dict[str, float]:
    """MC loss (REFERENCE §3), mean Q per action and model-vs-logged action shares, on all rows."""
    with torch.no_grad():
        q = network(data.states, data.possible_mask)
    q_logged = q.gather(1, data.actions[:, None]).squeeze(1)
    metrics = {"train/mc_loss": float(torch.mean(torch.abs(data.mc_returns - q_logged)))}
    greedy = q.argmax(dim=1)
    for i, name in enumerate(actions):
        possible = data.possible_mask[:, i] > 0.5
        if bool(possible.any()):
            metrics[f"train/q_mean/{name}"] = float(q[possible, i].mean())
        metrics[f"train/model_action_share/{name}"] = float((greedy == i).float().mean())
        metrics[f"train/logged_action_share/{name}"] = float((data.actions == i).float().mean())
    return metrics


def _data_range(timelines: pd.DataFrame) -> DataRange:
    if "timestamp" not in timelines.columns or len(timelines) == 0:
        return DataRange(rows=len(timelines))
    stamps = pd.to_datetime(timelines["timestamp"], utc=True)
    return DataRange(
        start=stamps.min().to_pydatetime(), end=stamps.max().to_pydatetime(), rows=len(timelines)
    )
