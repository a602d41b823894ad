"""Multi-process training with DistributedDataParallel: process group setup and data sharding.

Launch with `torchrun` (one machine or several); it sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT, which `open_process_group` reads. gloo serves CPUs, NCCL GPUs.

The math does not depend on the number of processes: every process draws the same global
batch from the same seeded permutation and takes a strided shard of it, and each local loss is
scaled so DDP's gradient average equals the gradient of the global-batch mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainer.errors import TrainerError

Backend = Literal["gloo", "nccl"]
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class DistributedConfig(BaseModel):
    """How processes talk. `auto` picks NCCL for CUDA and gloo for CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = Field(300.0, gt=0, description="how long a collective may wait for a slow peer")


class DistributedError(TrainerError):
    """The process group could not be set up (bad launch environment, unusable backend)."""


@dataclass(frozen=True, slots=True)
class DistributedContext:
    """This process's place in the run. A single-process run is rank 0 of 1 with no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Backend | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and registers the model."""
        return self.rank == 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.device == "cuda" else torch.device("cpu")

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around `module` when there are peers, else the module itself."""
        if self.world_size == 1:
            return module
        device_ids = [self.local_rank] if self.device == "cuda" else None
        # Buffers (normalization constants) never change: no need to broadcast them every step.
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor over all processes (returns it unchanged in a single-process run)."""
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Average `.grad` over processes, as DDP does, for parameters outside any DDP module."""
        if self.world_size == 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.world_size

    def shard(self, global_rows: torch.Tensor) -> MinibatchShard:
        """This process's part of the global minibatch `global_rows`."""
        return MinibatchShard(global_rows, self.rank, self.world_size)


SINGLE_PROCESS = DistributedContext()


class ForwardOf(nn.Module):
    """`module.<method>(...)` as a module's forward, so DDP can wrap the one call that needs gradients."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: torch.Tensor) -> Any:
        return getattr(self.module, self.method)(*args)


@dataclass(frozen=True, slots=True)
class MinibatchShard:
    """One process's strided share of a global minibatch, and how to scale its loss.

    Every process holds the same `global_rows` (drawn from the same seeded permutation). Losses
    are sums over this process's `rows` times `loss_scale`: DDP's gradient average over processes
    is then the gradient of the mean over the global batch, whatever the shard sizes. Random draws
    a loss needs per row (SAC's sampled actions, TD3's target noise) are drawn for the whole global
    batch on every process and cut with `share`, so they do not depend on the number of processes.
    """

    global_rows: torch.Tensor
    rank: int = 0
    world_size: int = 1

    @classmethod
    def whole(cls, n_rows: int) -> MinibatchShard:
        """A single-process minibatch of `n_rows` rows (0..n-1)."""
        return cls(torch.arange(n_rows))

    @property
    def rows(self) -> torch.Tensor:
        return shard_rows(self.global_rows, self.rank, self.world_size)

    @property
    def global_size(self) -> int:
        return len(self.global_rows)

    @property
    def loss_scale(self) -> float:
        return self.world_size / max(self.global_size, 1)

    def share(self, values: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor with one row per global-batch row."""
        return shard_rows(values, self.rank, self.world_size)


def select_backend(config: DistributedConfig, device: str) -> Backend:
    """NCCL for CUDA, gloo for CPU, unless the config names one; NCCL on CPU cannot work."""
    if config.backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if config.backend == "nccl" and device != "cuda":
        raise DistributedError(
            "distributed.backend 'nccl' needs algorithm.device 'cuda' (NCCL has no CPU path); "
            "use backend 'gloo' or 'auto' for CPU training"
        )
    return config.backend


def shard_rows(global_rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's strided share of one global batch (like DistributedSampler, per batch)."""
    return global_rows if world_size == 1 else global_rows[rank::world_size]


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun; 1 when the process was started directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def open_process_group(config: DistributedConfig, device: str) -> Iterator[DistributedContext]:
    """Join the process group torchrun described in the environment; leave it on exit.

    Without a torchrun environment (WORLD_SIZE unset or 1) this yields the single-process
    context and starts nothing.
    """
    world_size = launched_world_size()
    if world_size == 1:
        yield DistributedContext(device=device)
        return
    missing = [
        name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ
    ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world_size} but {missing} are not set; launch with torchrun "
            "(see docs/training.md) or unset WORLD_SIZE for a single-process run"
        )
    backend = select_backend(config, device)
    if device == "cuda" and not torch.cuda.is_available():
        raise DistributedError("algorithm.device is 'cuda' but torch sees no GPU on this machine")
    if backend == "gloo" and os.environ["MASTER_ADDR"] in _LOOPBACK:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ["LOCAL_RANK"]),
        backend=backend,
        device=device,
    )
    if device == "cuda":
        torch.cuda.set_device(context.local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=context.rank,
            world_size=world_size,
            timeout=timedelta(seconds=config.timeout_s),
        )
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {context.rank}/{world_size} could not join the {backend} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}; check that every node uses "
            "the same MASTER_ADDR/MASTER_PORT and that GLOO_SOCKET_IFNAME names a reachable interface"
        ) from exc
    try:
        yield context
    finally:
        dist.destroy_process_group()
