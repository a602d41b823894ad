"""Pendulum-v1: SAC and TD3 in the online loop, acting and scored only through the exported ONNX policy.

Target: mean score ≥ −400 over 20 evaluation episodes within 20 000 environment steps
(Horizon's SAC bar was −500, REFERENCE §4). One torch thread; wall time is printed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from benchmarks._progress import progress_bar, write
from trainer.gym_loop import OnlineLoopConfig, env_action_bounds, run_online
from trainer.sac import SacConfig
from trainer.td3 import Td3Config

TARGET = -400.0
ENV_STEPS = 20_000


def main(algorithms: tuple[str, ...] = ("sac", "td3"), seed: int = 0, *, progress: bool = True) -> None:
    env = gym.make("Pendulum-v1")
    low, high = env_action_bounds(env)
    env.close()
    common = {"action_low": low, "action_high": high, "hidden_sizes": [128, 128], "seed": seed}
    configs = {"sac": SacConfig(**common), "td3": Td3Config(**common)}
    loop = OnlineLoopConfig(
        env_id="Pendulum-v1",
        total_env_steps=ENV_STEPS,
        warmup_steps=1_000,
        steps_per_round=200,
        eval_episodes=20,
        eval_every_steps=5_000,
        seed=seed,
    )
    for name in progress_bar(algorithms, desc="Pendulum learners", enabled=progress):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_online(configs[name], loop, Path(tmp) / "tb")
        curve = ", ".join(f"{int(h['env_steps'])}: {h['eval/mean_score']:.0f}" for h in result.history)
        verdict = "meets" if result.mean_score >= TARGET else "MISSES"
        write(
            f"   {name}: mean score {result.mean_score:.1f} ± {np.std(result.scores):.1f} over "
            f"{len(result.scores)} episodes after {result.env_steps} env steps ({verdict} ≥ {TARGET:.0f}); "
            f"wall {time.perf_counter() - started:.0f}s (updates+exports {result.train_s:.0f}s)"
        )
        write(f"        ONNX policy score by env steps: {curve}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("sac", "td3"))
