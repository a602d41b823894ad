"""DDP: a 2-process torchrun run (gloo, CPU) reaches the parameters a 1-process run reaches on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timeline_files import write_run_config, write_timelines
from trainer_timelines import make_bandit_timelines

from tests.helpers import free_port
from trainer import DistributedConfig, DistributedError, ModelRegistry, load_run_config, run_training
from trainer.checkpoint import list_checkpoints
from trainer.distributed import select_backend, shard_rows

REPO = Path(__file__).resolve().parents[2]
# 301 rows, global batch 64: the last batch (45 rows) splits 23/22, so uneven shards are covered.
ALGORITHM = {"gamma": 0.5, "batch_size": 64, "learning_rate": 3e-3, "hidden_sizes": [16, 16], "num_epochs": 6}


def test_shards_partition_each_global_batch() -> None:
    rows = torch.randperm(45, generator=torch.Generator().manual_seed(0))
    shards = [shard_rows(rows, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [23, 22]
    assert sorted(torch.cat(shards).tolist()) == sorted(rows.tolist())


def test_backend_follows_the_device() -> None:
    assert select_backend(DistributedConfig(), "cpu") == "gloo"
    assert select_backend(DistributedConfig(), "cuda") == "nccl"
    with pytest.raises(DistributedError, match="'nccl' needs algorithm.device 'cuda'"):
        select_backend(DistributedConfig(backend="nccl"), "cpu")


def _two_runs(tmp_path: Path) -> dict[str, str]:
    """Run folders `one` and `two` over the same 301 timeline rows, and the launchers' environment."""
    write_timelines(make_bandit_timelines(301, seed=11), tmp_path / "stream")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stream").symlink_to(tmp_path / "stream")
        write_run_config(tmp_path / name, ALGORITHM, checkpoint={"dir": "ckpt", "interval_steps": 1000})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    return env


def test_two_process_torchrun_run_matches_one_process(tmp_path: Path) -> None:
    env = _two_runs(tmp_path)
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "infra.cli", "train", "--config", str(tmp_path / "two" / "run.yaml"),
    ]  # fmt: skip
    two = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("registered dqn model") == 1, "only rank 0 registers"

    one = run_training(load_run_config(tmp_path / "one" / "run.yaml"))

    assert one is not None
    assert len(ModelRegistry(tmp_path / "two" / "registry").list_versions()) == 1
    final_one = torch.load(list_checkpoints(tmp_path / "one" / "ckpt")[-1], weights_only=True)
    final_two = torch.load(list_checkpoints(tmp_path / "two" / "ckpt")[-1], weights_only=True)
    assert final_one["global_step"] == final_two["global_step"] == 6 * 5, "global batch is the same"
    one_online, one_target = final_one["learner"]["online"], final_one["learner"]["target"]
    for name, tensor in one_online.items():
        torch.testing.assert_close(final_two["learner"]["online"][name], tensor, rtol=0, atol=1e-4, msg=name)
    changed = max(float((one_online[n] - one_target[n]).abs().max()) for n in one_online)
    assert changed > 1e-3, "training moved the weights, so matching them is not trivial"
    assert final_two["history"][-1]["train/td_loss"] == pytest.approx(
        final_one["history"][-1]["train/td_loss"], rel=1e-4
    )


def test_two_node_torchrun_run_matches_one_process(tmp_path: Path) -> None:
    """Two launchers, one process each, as on two machines: each gets its own --node-rank and the
    same static rendezvous (master address and port), over loopback; a shared run folder stands in
    for the shared filesystem docs/training.md requires."""
    env = _two_runs(tmp_path)
    port = free_port()

    def launcher(node: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "infra.cli", "train", "--config", str(tmp_path / "two" / "run.yaml"),
        ]  # fmt: skip

    launchers = [
        subprocess.Popen(
            launcher(node), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for node in (0, 1)
    ]
    outputs = [process.communicate(timeout=180) for process in launchers]
    for node, (process, (_, stderr)) in enumerate(zip(launchers, outputs, strict=True)):
        assert process.returncode == 0, f"node {node}: {stderr[-3000:]}"
    assert [stdout.count("registered dqn model") for stdout, _ in outputs] == [1, 0], "only rank 0 registers"

    one = run_training(load_run_config(tmp_path / "one" / "run.yaml"))

    assert one is not None
    final_one = torch.load(list_checkpoints(tmp_path / "one" / "ckpt")[-1], weights_only=True)
    final_two = torch.load(list_checkpoints(tmp_path / "two" / "ckpt")[-1], weights_only=True)
    assert final_one["global_step"] == final_two["global_step"] == 6 * 5, "global batch is the same"
    for name, tensor in final_one["learner"]["online"].items():
        torch.testing.assert_close(final_two["learner"]["online"][name], tensor, rtol=0, atol=1e-4, msg=name)
