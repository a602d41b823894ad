"""The offline epoch loop every minibatch family shares (DQN and CQL, parametric DQN, SAC, TD3,
the neural bandit): seeded shuffles, sharded global minibatches (DDP), per-epoch metrics reduced
over processes, tensorboardX scalars, checkpoints, resume.

Every family has the same guarantees: the result does not depend on the number of processes
(up to float rounding), and a run killed at any step and resumed from its newest checkpoint ends
exactly where an uninterrupted run ends.
An algorithm brings two things: a `learner` whose `state_dict`/`load_state_dict` cover all
its networks, optimizers and counters, and a `step` that makes one update on a `MinibatchShard`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from tensorboardX import SummaryWriter

from features import NormalizationSpec
from trainer._progress import epoch_bar, show_metrics
from trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointConfig,
    fingerprint_parts,
    load_latest_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from trainer.distributed import DistributedContext, MinibatchShard

StepHook = Callable[[int], None]
MinibatchStep = Callable[[MinibatchShard], dict[str, float]]
"""One update on this process's shard → metrics, each this process's share of the global batch's
value: averaged over processes it is the global value (a loss computed with `loss_scale` is)."""


class Stateful(Protocol):
    """Networks, optimizers and counters of one learner, as a plain (weights_only-loadable) dict."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EpochLoop:
    """What the loop needs besides the update itself."""

    n_rows: int
    batch_size: int
    num_epochs: int
    seed: int
    desc: str  # progress bar label (the algorithm type)
    shown: tuple[str, ...]  # metrics shown on the progress bar
    fingerprint: dict[str, str]  # what must match to resume (see trainer.checkpoint)

    @classmethod
    def from_config(
        cls,
        config: BaseModel,
        spec: NormalizationSpec,
        data: Sequence[torch.Tensor],
        *,
        n_rows: int,
        shown: tuple[str, ...],
        actions: Sequence[str] | None = None,
        action_spec: NormalizationSpec | None = None,
    ) -> EpochLoop:
        """The loop an algorithm config asks for: its `batch_size`, `num_epochs`, `seed` and `type`
        (the progress label); a checkpoint resumes it only for the same config, spec, training
        tensors `data` and actions or action spec (`trainer.checkpoint.fingerprint_parts`)."""
        return cls(
            n_rows=n_rows,
            batch_size=config.batch_size,
            num_epochs=config.num_epochs,
            seed=config.seed,
            desc=config.type,
            shown=shown,
            fingerprint=fingerprint_parts(config, spec, data, actions=actions, action_spec=action_spec),
        )


@dataclass
class _Progress:
    """Where the loop is; everything here goes into a checkpoint."""

    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    global_step: int = 0
    epoch_shuffle_state: torch.Tensor | None = None  # generator state before epoch `epoch`'s permutation
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's metric × global batch rows so far
    rows: dict[str, int] = field(default_factory=dict)  # global rows behind each sum
    history: list[dict[str, float]] = field(default_factory=list)


def run_epochs(
    loop: EpochLoop,
    learner: Stateful,
    step: MinibatchStep,
    ctx: DistributedContext,
    *,
    checkpoint: CheckpointConfig | None,
    log_dir: Path | None,
    on_step: StepHook | None,
    epoch_metrics: Callable[[], dict[str, float]] | None = None,
    throughput: list[float] | None = None,
) -> list[dict[str, float]]:
    """`loop.num_epochs` shuffled passes of global minibatches; returns one metrics dict per epoch.

    An epoch's metric is the row-weighted mean of its per-step values over all processes;
    `epoch_metrics()` (deterministic, computed on every process) adds whole-data metrics.
    The torch RNG is checkpointed, so a `step` may draw from it (the same draws on every process).
    Each epoch's speed, global rows over the wall time of its steps, is logged as
    `train/transitions_per_s` and appended to `throughput` when given; it stays out of the
    returned metrics, which are deterministic.
    """
    shuffle = torch.Generator().manual_seed(loop.seed)
    progress = _Progress()
    with ExitStack() as cleanup:
        # A resume sets the torch RNG state: fork it, so the caller's stays as it was.
        cleanup.enter_context(torch.random.fork_rng(devices=[]))
        if checkpoint is not None and checkpoint.resume:
            saved = load_latest_checkpoint(checkpoint, loop.fingerprint)
            if saved is not None:
                progress = _restore(saved, learner)
        writer = SummaryWriter(str(log_dir)) if log_dir is not None and ctx.is_main else None
        if writer is not None:
            cleanup.callback(writer.close)
        epochs = epoch_bar(range(progress.epoch, loop.num_epochs), desc=loop.desc, enabled=ctx.is_main)
        for epoch in epochs:
            if progress.epoch_shuffle_state is not None:
                shuffle.set_state(progress.epoch_shuffle_state)
            progress.epoch, progress.epoch_shuffle_state = epoch, shuffle.get_state()
            batches = torch.randperm(loop.n_rows, generator=shuffle).split(loop.batch_size)
            started_s, epoch_rows = time.perf_counter(), 0
            for index in range(progress.batch, len(batches)):
                size = len(batches[index])
                for name, value in step(ctx.shard(batches[index])).items():
                    progress.sums[name] = progress.sums.get(name, 0.0) + value * size
                    progress.rows[name] = progress.rows.get(name, 0) + size
                progress.batch, progress.global_step = index + 1, progress.global_step + 1
                epoch_rows += size
                if checkpoint is not None and progress.global_step % checkpoint.interval_steps == 0:
                    _checkpoint(checkpoint, ctx, progress, learner, loop.fingerprint)
                if on_step is not None:
                    on_step(progress.global_step)
            transitions_per_s = epoch_rows / max(time.perf_counter() - started_s, 1e-9)
            metrics = _reduced_means(progress, ctx)
            if epoch_metrics is not None:
                metrics.update(epoch_metrics())
            if writer is not None:
                for name, value in metrics.items():
                    writer.add_scalar(name, value, epoch)
                writer.add_scalar("train/transitions_per_s", transitions_per_s, epoch)
            if throughput is not None:
                throughput.append(transitions_per_s)
            progress.history.append(metrics)
            show_metrics(epochs, metrics, loop.shown)
            # The generator now stands where the next epoch's permutation starts.
            progress.epoch, progress.batch, progress.epoch_shuffle_state = epoch + 1, 0, shuffle.get_state()
            progress.sums, progress.rows = {}, {}
            if checkpoint is not None:
                _checkpoint(checkpoint, ctx, progress, learner, loop.fingerprint)
    return progress.history


def _reduced_means(progress: _Progress, ctx: DistributedContext) -> dict[str, float]:
    """Each metric's row-weighted epoch mean; a step's value is the mean of its processes' shares."""
    names = sorted(progress.sums)
    if not names:
        return {}
    totals = ctx.all_reduce_sum(torch.tensor([progress.sums[n] for n in names], dtype=torch.float64))
    return {
        name: float(total) / (ctx.world_size * progress.rows[name])
        for name, total in zip(names, totals, strict=True)
    }


def _checkpoint(
    config: CheckpointConfig,
    ctx: DistributedContext,
    progress: _Progress,
    learner: Stateful,
    fingerprint: dict[str, str],
) -> None:
    """Rank 0 writes; the others wait, so a checkpoint on disk never runs ahead of any process."""
    if ctx.is_main:
        save_checkpoint(
            config,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": run_fingerprint(fingerprint),
                "fingerprint_parts": fingerprint,
                "global_step": progress.global_step,
                "epoch": progress.epoch,
                "batch": progress.batch,
                "epoch_shuffle_state": progress.epoch_shuffle_state,
                "metric_sums": progress.sums,
                "metric_rows": progress.rows,
                "history": progress.history,
                "learner": learner.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
        )
    ctx.barrier()


def _restore(saved: dict[str, Any], learner: Stateful) -> _Progress:
    learner.load_state_dict(saved["learner"])
    torch.set_rng_state(saved["torch_rng"])
    return _Progress(
        epoch=int(saved["epoch"]),
        batch=int(saved["batch"]),
        global_step=int(saved["global_step"]),
        epoch_shuffle_state=saved["epoch_shuffle_state"],
        sums={k: float(v) for k, v in saved["metric_sums"].items()},
        rows={k: int(v) for k, v in saved["metric_rows"].items()},
        history=[dict(h) for h in saved["history"]],
    )


@dataclass(frozen=True)
class ModulesAndOptimizers:
    """A `Stateful` over named modules and optimizers (for learners with nothing else to save)."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: module.state_dict() for name, module in self.modules.items()},
            **{name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])
