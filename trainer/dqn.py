"""Off-policy DQN on logged timelines: the Q-network and the training loop, top to bottom.

The network owns its normalization (`features.NormalizationModule`), so the exported
graph takes raw features with NaN for missing, exactly what serving has at hand.
Training normalizes every logged state once, before the first epoch, and updates the layers
after the normalization on those rows (`QNetwork.q_normalized`): the normalization is a fixed
function of the spec, applied row by row, so this is the same math as normalizing each
minibatch, without rerunning it on every batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from features import NormalizationModule, NormalizationSpec
from trainer._fused_adam import adam_step, fused_adam
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
        # The body's Linears in order (a plain tuple: they are registered once, under `body`).
        self._hidden = tuple(layer for layer in layers if isinstance(layer, nn.Linear))
        self.dueling = dueling
        self.advantage = nn.Linear(width, n_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def q_all(self, features_raw: torch.Tensor) -> torch.Tensor:
        """Q for every action, ignoring which are possible (training targets index into it)."""
        return self.q_normalized(self.normalization(features_raw))

    def q_normalized(self, features: torch.Tensor) -> torch.Tensor:
        """`q_all` after the normalization: [B, spec.output_dim] normalized features → Q [B, A].

        The same ops as `body` then the head, called directly (no per-layer module dispatch):
        training runs this on rows normalized once, thousands of times an epoch.
        """
        hidden = features
        for linear in self._hidden:
            hidden = torch.relu(F.linear(hidden, linear.weight, linear.bias))
        advantage = F.linear(hidden, self.advantage.weight, self.advantage.bias)
        if self.value is None:
            return advantage
        value = F.linear(hidden, self.value.weight, self.value.bias)
        return value + advantage - advantage.mean(dim=1, keepdim=True)

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

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = QNetwork(spec, len(actions), config.hidden_sizes, config.dueling).to(device)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    rows_table = _UpdateRows.build(_to_device(cpu_data, device), network.normalization)
    # Q of the logged states: the one forward with gradients (through DDP when distributed).
    state_q = network.q_normalized if ctx.world_size == 1 else ctx.wrap(ForwardOf(network, "q_normalized"))
    trained_parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = fused_adam(trained_parameters, config.learning_rate, config.weight_decay)
    online_parameters, target_parameters = list(network.parameters()), list(target.parameters())

    def step(shard: MinibatchShard) -> dict[str, float]:
        batch = rows_table.batch(shard.rows.to(device))
        squared, row_loss = _row_losses(state_q, network, target, batch, config)
        total = row_loss.sum()
        for parameter in trained_parameters:  # optimizer.zero_grad(set_to_none=True), minus its bookkeeping
            parameter.grad = None
        (total * shard.loss_scale).backward()
        adam_step(optimizer)
        _soft_update(target_parameters, online_parameters, config.target_update_tau)
        td_sum = total if squared is row_loss else squared.sum()
        return {"train/td_loss": td_sum.item() * shard.loss_scale}

    def epoch_metrics() -> dict[str, float]:
        return {
            "train/learning_rate": float(optimizer.param_groups[0]["lr"]),
            **_epoch_metrics(network, rows_table, actions),
        }

    loop = EpochLoop.from_config(
        config,
        spec,
        (cpu_data.states, cpu_data.next_states, cpu_data.actions, cpu_data.rewards),
        n_rows=cpu_data.n_rows,
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


@dataclass(frozen=True, slots=True)
class _Batch:
    """One minibatch, as views into the gathered rows of `_UpdateRows.table`; per-row values are [B, 1]."""

    states: torch.Tensor  # [B, D] normalized
    next_states: torch.Tensor  # [B, D] normalized
    rewards: torch.Tensor  # [B, 1]
    bootstrap: torch.Tensor  # [B, 1] discount × not_terminal, 0 without a possible next action
    actions: torch.Tensor  # int64 [B, 1]
    next_penalty: torch.Tensor  # [B, A] -inf on impossible next actions (all 0 when none is possible)
    possible_mask: torch.Tensor  # [B, A] float 1 = possible in this state


@dataclass(frozen=True, slots=True)
class _UpdateRows:
    """Every row's update inputs, normalized once and packed side by side in one float tensor.

    A minibatch is then one gather and one split (`batch`) instead of one normalization and
    eight gathers. Columns: state (D) | next state (D) | reward | bootstrap | action |
    next penalty (A) | possible (A).
    """

    table: torch.Tensor
    widths: tuple[int, ...]  # of the column groups above
    actions: torch.Tensor  # int64 [N] (whole-data metrics)
    mc_returns: torch.Tensor  # [N]

    @classmethod
    def build(cls, data: TransitionTensors, normalization: nn.Module) -> _UpdateRows:
        with torch.no_grad():
            states, next_states = normalization(data.states), normalization(data.next_states)
        possible_next = data.possible_next_mask > 0.5
        # A row with no possible next action bootstraps from 0: its factor is 0 and its penalty
        # stays 0, so its (finite) max Q times 0 adds exactly 0 to the reward.
        has_next = possible_next.any(dim=1, keepdim=True)
        next_penalty = torch.zeros_like(data.possible_next_mask).masked_fill_(
            ~possible_next & has_next, -math.inf
        )
        bootstrap = torch.where(has_next.squeeze(1), data.discounts * data.not_terminal, 0.0)
        columns = [
            states,
            next_states,
            data.rewards[:, None],
            bootstrap[:, None],
            data.actions[:, None].to(torch.float32),  # exact: action indices are small integers
            next_penalty,
            data.possible_mask,
        ]
        table = torch.cat(columns, dim=1)
        return cls(table, tuple(c.shape[1] for c in columns), data.actions, data.mc_returns)

    def _columns(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return list(rows.split(self.widths, dim=1))

    @property
    def states(self) -> torch.Tensor:
        return self._columns(self.table)[0]

    @property
    def possible_mask(self) -> torch.Tensor:
        return self._columns(self.table)[-1]

    def batch(self, rows: torch.Tensor) -> _Batch:
        states, next_states, rewards, bootstrap, actions, next_penalty, possible = self._columns(
            self.table.index_select(0, rows)
        )
        return _Batch(
            states, next_states, rewards, bootstrap, actions.to(torch.int64), next_penalty, possible
        )


def _row_losses(
    state_q: Callable[[torch.Tensor], torch.Tensor],
    network: QNetwork,
    target: QNetwork,
    batch: _Batch,
    config: DqnConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared Bellman errors, loss per row), both [B, 1], on one minibatch; the loss adds CQL's
    penalty if set.

    Double-Q picks a' with the online network; `bootstrap` is γ (γ^m for n-step targets) on rows
    with a next state and a possible next action, else 0 (the target is then the reward alone).
    """
    q_all = state_q(batch.states)
    q_taken = q_all.gather(1, batch.actions)
    with torch.no_grad():
        target_q = target.q_normalized(batch.next_states) + batch.next_penalty
        if config.double_q:
            best = (network.q_normalized(batch.next_states) + batch.next_penalty).argmax(dim=1, keepdim=True)
            next_value = target_q.gather(1, best)
        else:
            next_value = target_q.max(dim=1, keepdim=True).values
        y = batch.rewards + batch.bootstrap * next_value
    squared = (q_taken - y) ** 2
    if isinstance(config, CqlConfig):
        penalty = conservative_penalty(q_all, batch.actions.squeeze(1), batch.possible_mask)
        return squared, squared + config.cql_alpha * penalty[:, None]
    return squared, squared


def _to_device(data: TransitionTensors, device: torch.device) -> TransitionTensors:
    if device.type == "cpu":
        return data
    return dataclasses.replace(
        data, **{f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)}
    )


def _soft_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target ← target + τ (online − target), all parameters in one call (the same `lerp_` each)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)


def _epoch_metrics(network: QNetwork, rows: _UpdateRows, actions: list[str]) -> dict[str, float]:
    """MC loss (REFERENCE §3), mean and std of Q per action and model-vs-logged action shares, on all rows."""
    possible_mask = rows.possible_mask
    with torch.no_grad():
        q_all = network.q_normalized(rows.states)
        q = torch.where(possible_mask > 0.5, q_all, torch.full_like(q_all, -math.inf))
    q_logged = q.gather(1, rows.actions[:, None]).squeeze(1)
    metrics = {"train/mc_loss": float(torch.mean(torch.abs(rows.mc_returns - q_logged)))}
    greedy = q.argmax(dim=1)
    for i, name in enumerate(actions):
        possible = possible_mask[:, i] > 0.5
        if bool(possible.any()):
            metrics[f"train/q_mean/{name}"] = float(q[possible, i].mean())
            metrics[f"train/q_std/{name}"] = float(q[possible, i].std(correction=0))
        metrics[f"train/model_action_share/{name}"] = float((greedy == i).float().mean())
        metrics[f"train/logged_action_share/{name}"] = float((rows.actions == i).float().mean())
    return metrics
