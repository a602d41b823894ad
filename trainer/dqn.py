"""Off-policy DQN on logged timelines: the Q-network and the training loop, top to bottom.

The network owns its normalization (`features.NormalizationModule`), so the exported
graph takes raw features with NaN for missing, exactly what serving has at hand.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tensorboardX import SummaryWriter
from torch import nn

from features import NormalizationModule, NormalizationSpec
from trainer._progress import epoch_bar, show_metrics
from trainer.artifact import DataRange
from trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointConfig,
    load_latest_checkpoint,
    run_fingerprint,
    save_checkpoint,
    tensor_digest,
)
from trainer.config import DqnConfig
from trainer.cql import CqlConfig, conservative_penalty
from trainer.data import TransitionTensors, build_transitions
from trainer.distributed import SINGLE_PROCESS, DistributedContext, shard_rows
from trainer.nstep import n_step_transitions

StepHook = Callable[[int], None]


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
    timelines: pd.DataFrame,
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


class _StateQ(nn.Module):
    """Q of the logged states: the only forward that needs gradients, so the one DDP wraps."""

    def __init__(self, network: QNetwork):
        super().__init__()
        self.network = network

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.network.q_all(states)


@dataclass
class _Progress:
    """Where the loop is; everything here goes into a checkpoint."""

    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    global_step: int = 0
    epoch_shuffle_state: torch.Tensor | None = None  # generator state before epoch `epoch`'s permutation
    td_sum: float = 0.0  # this epoch's squared TD errors so far (all processes)
    td_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _train(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: list[str],
    config: DqnConfig,
    log_dir: Path,
    checkpoint: CheckpointConfig | None,
    ctx: DistributedContext,
    on_step: StepHook | None,
) -> TrainingResult:
    feature_names = list(spec.feature_names)
    cpu_data = n_step_transitions(
        timelines,
        build_transitions(timelines, feature_names, actions, config.gamma, config.reward_clip),
        config.n_step,
        config.gamma,
    )
    device = ctx.torch_device
    data = _to_device(cpu_data, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = QNetwork(spec, len(actions), config.hidden_sizes, config.dueling).to(device)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    state_q = ctx.wrap(_StateQ(network))
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    progress = _Progress()
    fingerprint = _fingerprint_parts(config, actions, spec, cpu_data)
    if checkpoint is not None and checkpoint.resume:
        saved = load_latest_checkpoint(checkpoint, fingerprint)
        if saved is not None:
            progress = _restore(saved, network, target, optimizer, device)

    throughputs: list[float] = []
    writer = SummaryWriter(str(log_dir)) if ctx.is_main else None
    try:
        epochs = epoch_bar(range(progress.epoch, config.num_epochs), desc=config.type, enabled=ctx.is_main)
        for epoch in epochs:
            if progress.epoch_shuffle_state is not None:
                shuffle.set_state(progress.epoch_shuffle_state)
            progress.epoch, progress.epoch_shuffle_state = epoch, shuffle.get_state()
            batches = torch.randperm(data.n_rows, generator=shuffle).split(config.batch_size)
            started, first_batch = time.perf_counter(), progress.batch
            for index in range(progress.batch, len(batches)):
                global_rows = batches[index]
                rows = shard_rows(global_rows, ctx.rank, ctx.world_size).to(device)
                squared, row_loss = _row_losses(state_q, network, target, data, rows, config)
                # DDP averages gradients over processes: scaling by world/global makes that average
                # the gradient of the mean over the whole global batch, whatever the shard sizes.
                loss = row_loss.sum() * (ctx.world_size / len(global_rows))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _soft_update(target, network, config.target_update_tau)
                progress.batch, progress.global_step = index + 1, progress.global_step + 1
                progress.td_sum += float(squared.detach().sum())
                progress.td_count += len(rows)
                if checkpoint is not None and progress.global_step % checkpoint.interval_steps == 0:
                    _checkpoint(checkpoint, ctx, progress, network, target, optimizer, fingerprint)
                if on_step is not None:
                    on_step(progress.global_step)
            elapsed_s = time.perf_counter() - started
            transitions = sum(len(b) for b in batches[first_batch:])
            totals = ctx.all_reduce_sum(
                torch.tensor([progress.td_sum, float(progress.td_count)], device=device)
            )
            metrics = {
                "train/td_loss": float(totals[0] / totals[1]),
                "train/learning_rate": float(optimizer.param_groups[0]["lr"]),
            }
            throughputs.append(transitions / max(elapsed_s, 1e-9))
            if ctx.is_main:
                metrics.update(_epoch_metrics(network, data, actions))
                for name, value in metrics.items():
                    writer.add_scalar(name, value, epoch)
                # Wall-clock speed is logged but kept out of `metrics`, which are deterministic.
                writer.add_scalar("train/transitions_per_s", throughputs[-1], epoch)
            progress.history.append(metrics)
            show_metrics(epochs, metrics, ("train/td_loss",))
            # The generator now stands where the next epoch's permutation starts.
            progress.epoch, progress.batch, progress.epoch_shuffle_state = epoch + 1, 0, shuffle.get_state()
            progress.td_sum, progress.td_count = 0.0, 0
            if checkpoint is not None:
                _checkpoint(checkpoint, ctx, progress, network, target, optimizer, fingerprint)
    finally:
        if writer is not None:
            writer.close()

    network.eval()
    return TrainingResult(
        network=network.cpu(),
        feature_names=feature_names,
        actions=actions,
        metrics=dict(progress.history[-1]) if progress.history else {},
        data_range=_data_range(timelines),
        history=progress.history,
        transitions_per_s=float(np.mean(throughputs)) if throughputs else 0.0,
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


def _fingerprint_parts(
    config: DqnConfig, actions: list[str], spec: NormalizationSpec, data: TransitionTensors
) -> dict[str, str]:
    """What must match to resume. Epochs may grow and threads/device may change: same math."""
    math = config.model_dump(mode="json", exclude={"num_epochs", "num_threads", "device"})
    return {
        "algorithm_config": json.dumps(math, sort_keys=True),
        "actions": json.dumps(actions),
        "normalization_spec_sha256": spec.content_sha256,
        "data_sha256": tensor_digest(data.states, data.next_states, data.actions, data.rewards),
    }


def _checkpoint(
    config: CheckpointConfig,
    ctx: DistributedContext,
    progress: _Progress,
    network: QNetwork,
    target: QNetwork,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, str],
) -> None:
    """Rank 0 writes; the others wait, so a checkpoint on disk never runs ahead of any process."""
    if ctx.is_main:
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": run_fingerprint(fingerprint),
            "fingerprint_parts": fingerprint,
            "global_step": progress.global_step,
            "epoch": progress.epoch,
            "batch": progress.batch,
            "epoch_shuffle_state": progress.epoch_shuffle_state,
            "td_sum": progress.td_sum,
            "td_count": progress.td_count,
            "history": progress.history,
            "online": network.state_dict(),
            "target": target.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(config, state)
    ctx.barrier()


def _restore(
    saved: dict, network: QNetwork, target: QNetwork, optimizer: torch.optim.Optimizer, device: torch.device
) -> _Progress:
    network.load_state_dict(saved["online"])
    target.load_state_dict(saved["target"])
    optimizer.load_state_dict(saved["optimizer"])
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)
    torch.set_rng_state(saved["torch_rng"])
    return _Progress(
        epoch=int(saved["epoch"]),
        batch=int(saved["batch"]),
        global_step=int(saved["global_step"]),
        epoch_shuffle_state=saved["epoch_shuffle_state"],
        td_sum=float(saved["td_sum"]),
        td_count=int(saved["td_count"]),
        history=[dict(h) for h in saved["history"]],
    )


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


def _data_range(timelines: pd.DataFrame) -> DataRange:
    if "timestamp" not in timelines.columns or len(timelines) == 0:
        return DataRange(rows=len(timelines))
    stamps = pd.to_datetime(timelines["timestamp"], utc=True)
    return DataRange(
        start=stamps.min().to_pydatetime(), end=stamps.max().to_pydatetime(), rows=len(timelines)
    )
