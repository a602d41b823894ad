"""DQN training throughput (transitions/s), 1 process vs 2 DDP processes (gloo, CPU).

Both runs see the same global batch (so the same math, see trainer/distributed.py); the
2-process figure counts all transitions the processes handle together. On this 2-core box
REFERENCE §6 measured no DDP speed-up for small MLPs (allreduce ~4 ms a step), so the useful
reading is the overhead per step. The comparison with d3rlpy's DQN is `d3rlpy_throughput`
(it runs d3rlpy in its own virtualenv, because d3rlpy pins gymnasium 1.0.0).
"""

from __future__ import annotations

import os
import socket
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch.multiprocessing as mp

ACTIONS = ["a0", "a1", "a2", "a3"]


def _timelines(n: int, n_features: int, seed: int = 0) -> pd.DataFrame:
    """One-step MDPs with dense features: the shape of a contextual-bandit refresh."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features))
    action = rng.integers(0, len(ACTIONS), n)
    reward = x[np.arange(n), action % n_features] + rng.normal(0, 0.1, n)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    names = [f"f{i}" for i in range(n_features)]
    return pd.DataFrame(
        {
            "mdp_id": [f"m{i}" for i in range(n)],
            "sequence_number": 0,
            "timestamp": [t0 + timedelta(seconds=i) for i in range(n)],
            "state_features": [dict(zip(names, row, strict=True)) for row in x.tolist()],
            "action": [ACTIONS[a] for a in action],
            "reward": reward,
            "next_state_features": [{} for _ in range(n)],
            "possible_actions": [ACTIONS] * n,
            "possible_next_actions": [[] for _ in range(n)],
            "not_terminal": False,
        }
    )


def _worker(rank: int, world_size: int, port: int, settings: dict, out: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from features import fit_normalization, frame_from_feature_maps
    from trainer import DistributedConfig, DqnConfig, train_dqn
    from trainer.distributed import open_process_group

    timelines = _timelines(settings["rows"], settings["features"])
    spec = fit_normalization(frame_from_feature_maps(list(timelines["state_features"])))
    config = DqnConfig(
        gamma=0.0, batch_size=settings["batch"], num_epochs=settings["epochs"], hidden_sizes=[64, 64]
    )
    with open_process_group(DistributedConfig(), "cpu") as context:
        result = train_dqn(timelines, spec, ACTIONS, config, out / f"tb{world_size}", distributed=context)
    if rank == 0:
        # Skip the first epoch: it pays for lazy initialisation.
        (out / f"tps{world_size}").write_text(str(float(np.mean(_epoch_speeds(out / f"tb{world_size}")[1:]))))
    del result


def _epoch_speeds(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.value for e in events.Scalars("train/transitions_per_s")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(rows: int = 50_000, features: int = 20, batch: int = 256, epochs: int = 4) -> None:
    settings = {"rows": rows, "features": features, "batch": batch, "epochs": epochs}
    print(f"   DQN 20→64→64→4, {rows} transitions, global batch {batch}, {epochs} epochs (first not timed)")
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for world_size in (1, 2):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            mp.spawn(_worker, args=(world_size, _free_port(), settings, out), nprocs=world_size, join=True)
            speeds[world_size] = float((out / f"tps{world_size}").read_text())
            steps_per_s = speeds[world_size] / batch
            print(
                f"   {world_size} process(es): {speeds[world_size]:>10,.0f} transitions/s "
                f"({steps_per_s:,.0f} steps/s, {1000 / steps_per_s:.2f} ms/step)"
            )
    print(f"   2-process / 1-process: {speeds[2] / speeds[1]:.2f}x")


if __name__ == "__main__":
    main()
