"""CartPole-v1 offline: 30 000 random-policy transitions → DQN family → ONNX → 50 scored episodes.

Horizon's bar was ≥ 120 (REFERENCE §4); ours is CartPole-v1 solved, ≥ 475. No reward shaping:
reward 1 per step, only real terminations terminal (time-limit truncation bootstraps). Every score
is the exported graph's under onnxruntime. One torch thread; wall time per configuration printed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from benchmarks._progress import progress_bar, write
from features import fit_normalization, frame_from_feature_maps
from trainer.config import DqnConfig
from trainer.cql import CqlConfig
from trainer.dqn import train_dqn
from trainer.export import export_model
from trainer.gym_discrete import CARTPOLE_ACTIONS, collect_discrete_timelines, evaluate_discrete_onnx

TARGET = 475.0
TRANSITIONS = 30_000
EPISODES = 50
COMMON = {"gamma": 0.99, "num_epochs": 50, "batch_size": 256}
CONFIGS: dict[str, DqnConfig] = {
    "dqn (double, dueling), 1-step": DqnConfig(**COMMON),
    "dqn (double, dueling), 3-step": DqnConfig(n_step=3, **COMMON),
    "cql α=0.5, 3-step": CqlConfig(cql_alpha=0.5, n_step=3, **COMMON),
}


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def main(seed: int = 0, *, progress: bool = True) -> None:
    timelines = collect_discrete_timelines(_cartpole, TRANSITIONS, seed=seed)
    episodes = timelines["mdp_id"].nunique()
    print(
        f"   logged {len(timelines)} random-policy transitions, {episodes} episodes "
        f"(random policy's mean score {len(timelines) / episodes:.1f})"
    )
    spec = fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
    for name, config in progress_bar(CONFIGS.items(), desc="CartPole configs", enabled=progress):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as log_dir:
            result = train_dqn(timelines, spec, CARTPOLE_ACTIONS, config, Path(log_dir))
        onnx_bytes = export_model(result.network, config.softmax_temperature)
        train_s = time.perf_counter() - started
        scores = evaluate_discrete_onnx(onnx_bytes, _cartpole, EPISODES, seed=10_000 + seed)
        verdict = "PASS" if np.mean(scores) >= TARGET else "below"
        write(
            f"   {name:32s} mean {np.mean(scores):6.1f}  min {np.min(scores):5.0f}  over {EPISODES} episodes "
            f"(target ≥ {TARGET:.0f}: {verdict})  train+export {train_s:.0f}s"
        )


if __name__ == "__main__":
    main()
