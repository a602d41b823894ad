"""d3rlpy's DQN on a .npz of transitions; run by benchmarks/d3rlpy_throughput.py in the d3rlpy venv.

Standalone on purpose (no project imports): it runs under `.venv-bench-d3rlpy/bin/python`.
Usage: python _d3rlpy_dqn_run.py DATA.npz SETTINGS_JSON  → prints one JSON line of timings.

The timed loop is d3rlpy's own `fit` inner loop without its logger: per step
`dataset.sample_transition_batch(batch)` then `algo.update(batch)`. Sampling and update are
timed separately; the first `warmup_steps` are run but not timed. A plain `algo.fit` of the
same number of steps (no-op logger, no evaluators, no progress bar) is timed as a cross-check.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main(data_path: str, settings_json: str) -> None:
    settings = json.loads(settings_json)
    torch.set_num_threads(settings["num_threads"])
    import d3rlpy
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import MDPDataset
    from d3rlpy.logging import NoopAdapterFactory

    data = np.load(data_path)
    dataset = MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        action_space=ActionSpace.DISCRETE,
        action_size=int(settings["n_actions"]),
    )

    def make_algo():
        d3rlpy.seed(settings["seed"])
        config = d3rlpy.algos.DQNConfig(
            batch_size=settings["batch_size"],
            learning_rate=settings["learning_rate"],
            gamma=settings["gamma"],
            target_update_interval=settings["target_update_interval"],
            encoder_factory=d3rlpy.models.VectorEncoderFactory(
                hidden_units=settings["hidden_sizes"], activation="relu"
            ),
            optim_factory=d3rlpy.optimizers.AdamFactory(),
            compile_graph=False,
        )
        algo = config.create(device="cpu:0")
        algo.build_with_dataset(dataset)
        return algo

    algo = make_algo()
    steps, warmup, batch_size = settings["steps"], settings["warmup_steps"], settings["batch_size"]
    sample_s = update_s = 0.0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = dataset.sample_transition_batch(batch_size)
        t1 = time.perf_counter()
        algo.update(batch)
        t2 = time.perf_counter()
        if step >= warmup:
            sample_s += t1 - t0
            update_s += t2 - t1

    fit_algo = make_algo()
    t0 = time.perf_counter()
    fit_algo.fit(
        dataset,
        n_steps=steps,
        n_steps_per_epoch=steps,
        logger_adapter=NoopAdapterFactory(),
        show_progress=False,
        save_interval=10**9,
    )
    fit_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "steps": steps,
                "sample_s": sample_s,
                "update_s": update_s,
                "fit_s": fit_s,
                "d3rlpy": d3rlpy.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
