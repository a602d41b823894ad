"""DQN training throughput (transitions/s): trainer.dqn vs d3rlpy 2.8.1's DQN, same data, same run.

Same data: one set of episodic transitions is generated, saved as .npz for d3rlpy and turned
into a timelines DataFrame for `train_dqn`. Same network: 20 features → 64 → 64 → 4, ReLU, plain
(not dueling) head. Same batch (256), Adam, lr, γ, about the same number of gradient steps,
1 torch thread in both, no evaluators.
Not the same: ours is MSE with a soft target update every step (τ = 0.05); d3rlpy's DQN is
Huber with a hard copy every `target_update_interval` steps. Our first layer is wider: the
normalization appends a presence flag per feature (40 inputs to d3rlpy's 20). Ours normalizes
every row once before the first epoch (setup, not timed; d3rlpy here normalizes nothing); the
layers then train on those rows, and the exported graph still holds the normalization.
Ours uses torch's fused Adam kernel; d3rlpy's `AdamFactory` builds the default (per-tensor) one.

What each figure includes (transitions/s = timed steps × batch / timed seconds):
- ours: every optimizer step of `train_dqn` (minibatch indexing, forward, backward, Adam,
  soft update, bookkeeping), timed between consecutive `on_step` calls; excludes the first
  `WARMUP_STEPS`, the steps that start an epoch (that gap holds the per-epoch metrics and
  tensorboard write), and setup (building tensors and the network).
- d3rlpy loop: its `fit` inner loop without the logger — `sample_transition_batch` + `update`
  per step, after `WARMUP_STEPS`; "update only" leaves the sampling out (it still includes
  d3rlpy turning the sampled numpy batch into tensors).
- d3rlpy fit(): wall time of a whole `fit` call (no-op logger), a cross-check of the loop.
The last line is one JSON object: `loop_ratio` (ours / d3rlpy sample + update) and `update_ratio`
(ours, whole step, / d3rlpy update only), the target being ≥ 2 for both, and the figures behind them.
d3rlpy runs in its own venv (benchmarks/_d3rlpy_env.py) because it pins gymnasium==1.0.0.
Each side runs `REPEATS` times alternately; the best run of each is reported (the box is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._d3rlpy_env import ensure_d3rlpy_venv
from benchmarks._progress import progress_bar

ACTIONS = ["a0", "a1", "a2", "a3"]
N_FEATURES = 20
EPISODE_LENGTH = 16
WARMUP_STEPS = 20
REPEATS = 3
RUNNER = Path(__file__).resolve().parent / "_d3rlpy_dqn_run.py"


def _transitions(n_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of EPISODE_LENGTH steps; the state drifts with the action so Q has something to learn."""
    rng = np.random.default_rng(seed)
    n_episodes = n_rows // EPISODE_LENGTH
    observations = np.empty((n_episodes, EPISODE_LENGTH, N_FEATURES), dtype=np.float32)
    actions = rng.integers(0, len(ACTIONS), (n_episodes, EPISODE_LENGTH))
    state = rng.normal(size=(n_episodes, N_FEATURES))
    for t in range(EPISODE_LENGTH):
        observations[:, t] = state
        state = 0.9 * state + 0.3 * rng.normal(size=state.shape)
        state[:, 0] += 0.5 * (actions[:, t] - 1.5)
    rewards = observations[:, :, 0] * (actions - 1.5) + rng.normal(0, 0.1, actions.shape)
    terminals = np.zeros((n_episodes, EPISODE_LENGTH), dtype=np.float32)
    terminals[:, -1] = 1.0
    return {
        "observations": observations.reshape(-1, N_FEATURES),
        "actions": actions.reshape(-1).astype(np.int64),
        "rewards": rewards.reshape(-1).astype(np.float32),
        "terminals": terminals.reshape(-1),
    }


def _timelines(data: dict[str, np.ndarray]) -> pd.DataFrame:
    """The same transitions as timelines rows (docs/architecture.md): next state = next row of the episode."""
    n = len(data["actions"])
    names = [f"f{i}" for i in range(N_FEATURES)]
    states = [dict(zip(names, row, strict=True)) for row in data["observations"].tolist()]
    terminal = data["terminals"] > 0.5
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "mdp_id": [f"m{i // EPISODE_LENGTH}" for i in range(n)],
            "sequence_number": np.arange(n) % EPISODE_LENGTH,
            "timestamp": [t0 + timedelta(seconds=i) for i in range(n)],
            "state_features": states,
            "action": [ACTIONS[a] for a in data["actions"]],
            "reward": data["rewards"].astype(np.float64),
            "next_state_features": [{} if terminal[i] else states[i + 1] for i in range(n)],
            "possible_actions": [ACTIONS] * n,
            "possible_next_actions": [[] if terminal[i] else ACTIONS for i in range(n)],
            "not_terminal": ~terminal,
        }
    )


def _run_ours(timelines: pd.DataFrame, settings: dict, log_dir: Path) -> dict[str, float]:
    from features import fit_normalization, frame_from_feature_maps
    from trainer import DqnConfig, train_dqn

    spec = fit_normalization(frame_from_feature_maps(list(timelines["state_features"])))
    config = DqnConfig(
        gamma=settings["gamma"],
        double_q=False,
        dueling=False,
        hidden_sizes=settings["hidden_sizes"],
        learning_rate=settings["learning_rate"],
        batch_size=settings["batch_size"],
        num_epochs=settings["epochs"],
        num_threads=settings["num_threads"],
    )
    stamps: list[float] = []
    result = train_dqn(
        timelines, spec, ACTIONS, config, log_dir, on_step=lambda _: stamps.append(time.perf_counter())
    )
    steps_per_epoch = settings["steps_per_epoch"]
    # Step k (1-based) took stamps[k-1] - stamps[k-2]; drop warm-up and epoch-starting steps.
    timed = [
        stamps[k - 1] - stamps[k - 2]
        for k in range(max(2, WARMUP_STEPS + 1), len(stamps) + 1)
        if (k - 1) % steps_per_epoch != 0
    ]
    return {
        "steps": len(timed),
        "loop_tps": len(timed) * settings["batch_size"] / sum(timed),
        "trainer_reported_tps": result.transitions_per_s,
    }


def _run_d3rlpy(python: Path, data_path: Path, settings: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["num_threads"]), "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(python), str(RUNNER), str(data_path), json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        cwd=data_path.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"d3rlpy run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    batch = settings["batch_size"]
    out["loop_tps"] = out["steps"] * batch / (out["sample_s"] + out["update_s"])
    out["update_tps"] = out["steps"] * batch / out["update_s"]
    out["fit_tps"] = out["steps"] * batch / out["fit_s"]
    return out


def main(
    epochs: int = 5,
    batches_per_epoch: int = 200,
    batch: int = 256,
    repeats: int = REPEATS,
    *,
    progress: bool = True,
) -> None:
    python = ensure_d3rlpy_venv()
    rows = batches_per_epoch * batch
    settings = {
        "seed": 0,
        "n_actions": len(ACTIONS),
        "hidden_sizes": [64, 64],
        "batch_size": batch,
        "learning_rate": 1e-3,
        "gamma": 0.9,
        "num_threads": 1,
        "epochs": epochs,
        "steps_per_epoch": batches_per_epoch,
        "target_update_interval": 100,
        "warmup_steps": WARMUP_STEPS,
        "steps": epochs * batches_per_epoch - WARMUP_STEPS,
    }
    print(
        f"   DQN {N_FEATURES}→64→64→{len(ACTIONS)} ReLU, {rows:,} transitions ({rows // EPISODE_LENGTH:,} "
        f"episodes), batch {batch}, {epochs * batches_per_epoch} gradient steps ({WARMUP_STEPS} warm-up not "
        f"timed), 1 thread, best of {repeats}"
    )
    data = _transitions(rows)
    timelines = _timelines(data)
    ours: list[dict] = []
    theirs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "transitions.npz"
        np.savez(data_path, **data)
        for repeat in progress_bar(range(repeats), desc="repeats (ours, d3rlpy)", enabled=progress):
            ours.append(_run_ours(timelines, settings, Path(tmp) / f"tb{repeat}"))
            theirs.append(_run_d3rlpy(python, data_path, settings))
    best_ours = max(ours, key=lambda r: r["loop_tps"])
    best_theirs = max(theirs, key=lambda r: r["loop_tps"])
    best_update = max(r["update_tps"] for r in theirs)
    best_fit = max(r["fit_tps"] for r in theirs)
    print(
        f"   d3rlpy {best_theirs['d3rlpy']} (torch {best_theirs['torch']}, {best_theirs['threads']} thread)"
    )
    print(
        f"   ours  train_dqn step loop:        {best_ours['loop_tps']:>9,.0f} transitions/s "
        f"({1000 * batch / best_ours['loop_tps']:.2f} ms/step; trainer's own per-epoch figure "
        f"{best_ours['trainer_reported_tps']:,.0f})"
    )
    print(
        f"   d3rlpy sample + update loop:      {best_theirs['loop_tps']:>9,.0f} transitions/s "
        f"({1000 * batch / best_theirs['loop_tps']:.2f} ms/step)"
    )
    print(
        f"   d3rlpy update only (no sampling): {best_update:>9,.0f} transitions/s "
        f"({1000 * batch / best_update:.2f} ms/step)"
    )
    print(f"   d3rlpy fit() whole call:          {best_fit:>9,.0f} transitions/s")
    print(
        f"   ratio ours / d3rlpy loop:        {best_ours['loop_tps'] / best_theirs['loop_tps']:.2f}x (target >= 2x)"
    )
    print(f"   ratio ours / d3rlpy update only: {best_ours['loop_tps'] / best_update:.2f}x (target >= 2x)")
    print(
        json.dumps(
            {
                "loop_ratio": round(best_ours["loop_tps"] / best_theirs["loop_tps"], 3),
                "update_ratio": round(best_ours["loop_tps"] / best_update, 3),
                "ours_loop_tps": round(best_ours["loop_tps"]),
                "ours_trainer_reported_tps": round(best_ours["trainer_reported_tps"]),
                "d3rlpy_loop_tps": round(best_theirs["loop_tps"]),
                "d3rlpy_update_tps": round(best_update),
                "d3rlpy_fit_tps": round(best_fit),
                "batch_size": batch,
                "timed_steps": best_ours["steps"],
                "repeats": repeats,
                "d3rlpy_version": best_theirs["d3rlpy"],
                "torch_version": best_theirs["torch"],
            }
        )
    )


if __name__ == "__main__":
    main()
