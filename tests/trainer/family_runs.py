"""Tiny training runs of the four families that share DQN's DDP and checkpoint loop, and a worker
that runs them in a 2-process gloo group (started with torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from parametric_timelines import toy_timelines
from trainer_timelines import BANDIT_ACTIONS, fit_spec, make_bandit_timelines

from apps.gym_envs import TargetReachEnv
from trainer import CheckpointConfig, DistributedConfig
from trainer.algorithms import train_function
from trainer.bandits import LinUcbConfig, NeuralBanditConfig
from trainer.distributed import SINGLE_PROCESS, DistributedContext, open_process_group
from trainer.gym_loop import collect_timelines
from trainer.parametric_dqn import ParametricDqnConfig
from trainer.sac import SacConfig
from trainer.td3 import Td3Config

# Every family: 101 rows (last global batch of 5 splits 3/2 over two processes), 4 steps an epoch.
STEPS_PER_EPOCH, EPOCHS = 4, 3
_CONTINUOUS = {
    "action_low": [-1.0],
    "action_high": [1.0],
    "gamma": 0.9,
    "hidden_sizes": [16, 16],
    "batch_size": 32,
    "num_epochs": EPOCHS,
    "actor_learning_rate": 3e-3,
    "critic_learning_rate": 3e-3,
    "target_update_tau": 0.05,
    "policy_delay": 2,  # so a resumed run must also restore the learner's update counter
    "seed": 3,
}


@dataclass(frozen=True)
class Family:
    timelines: Callable[[], pd.DataFrame]
    actions: list[str]
    config: Any


def _continuous_timelines() -> pd.DataFrame:
    """Random actions in a Gym task (multi-step, so targets bootstrap through the actor)."""
    frame = collect_timelines(TargetReachEnv, lambda obs, rng: rng.uniform(-1, 1, 1), 130, seed=0)
    return frame.head(101).reset_index(drop=True)


def _weighted_bandit_timelines() -> pd.DataFrame:
    """One-step rows with unequal logged propensities, so the weighted loss is not a plain mean."""
    frame = make_bandit_timelines(101, seed=11)
    frame["action_probability"] = np.random.default_rng(1).uniform(0.2, 0.9, len(frame))
    return frame


FAMILIES: dict[str, Family] = {
    "sac": Family(_continuous_timelines, ["action_0"], SacConfig(**_CONTINUOUS)),
    "td3": Family(_continuous_timelines, ["action_0"], Td3Config(**_CONTINUOUS)),
    "parametric_dqn": Family(
        lambda: toy_timelines(51, seed=2).head(101),
        [],
        ParametricDqnConfig(hidden_sizes=[16, 16], batch_size=32, num_epochs=EPOCHS, learning_rate=3e-3),
    ),
    "neural_bandit": Family(
        _weighted_bandit_timelines,
        BANDIT_ACTIONS,
        NeuralBanditConfig(
            hidden_sizes=[16], batch_size=32, num_epochs=EPOCHS, propensity_weighting=True, seed=4
        ),
    ),
}
LINEAR = Family(_weighted_bandit_timelines, BANDIT_ACTIONS, LinUcbConfig(propensity_weighting=True))


def train(
    family: Family,
    log_dir: Path,
    *,
    config: Any = None,
    timelines: pd.DataFrame | None = None,
    checkpoint: CheckpointConfig | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    on_step: Callable[[int], None] | None = None,
) -> Any:
    """One run through the algorithm table's train function (what `run_training` calls)."""
    config = config or family.config
    timelines = family.timelines() if timelines is None else timelines
    return train_function(config.type)(
        timelines,
        fit_spec(timelines),
        family.actions,
        config,
        log_dir,
        checkpoint=checkpoint,
        distributed=distributed,
        on_step=on_step,
    )


def two_process_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank `rank` of 2: trains every family (and LinUCB) with checkpoints; rank 0 saves results."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
    )
    out = Path(out_dir)
    with open_process_group(DistributedConfig(backend="gloo", timeout_s=60), "cpu") as context:
        assert context.world_size == 2 and context.rank == rank
        for name, family in [*FAMILIES.items(), ("linucb", LINEAR)]:
            checkpoint = (
                None
                if family is LINEAR
                else CheckpointConfig(dir=out / name / "ckpt", interval_steps=1000, keep=1)
            )
            steps: list[int] = []
            result = train(
                family, out / name / "tb", checkpoint=checkpoint, distributed=context, on_step=steps.append
            )
            if context.is_main:
                torch.save(
                    {
                        "weights": result.network.state_dict(),
                        "metrics": result.metrics,
                        "history": getattr(result, "history", []),
                        "steps": steps,
                    },
                    out / f"{name}.pt",
                )
