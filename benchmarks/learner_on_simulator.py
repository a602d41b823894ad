"""How much of the rule→oracle gap the DQN closes from one day of the rule's logs.

Offline (no Kafka/Spark): timelines come straight from the simulator, the candidate is trained,
exported and scored through its ONNX graph with the simulator's exact expected value.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from apps.notifications import ACTIONS, NotificationSim, NotificationSimConfig
from apps.offline import simulate_timelines
from benchmarks._progress import progress_bar
from features import fit_normalization, frame_from_feature_maps
from trainer import ModelRegistry, OnnxPolicy
from trainer.config import DqnConfig
from trainer.policy import EpsilonGreedyExploration
from trainer.workflow import train_and_register


def main(seeds: int = 3, *, progress: bool = True) -> None:
    sim = NotificationSim(NotificationSimConfig())
    next_day = sim.start_day(1)
    rule = sim.policy_value(next_day, sim.rule_send_probability)
    oracle = sim.oracle_value(next_day)
    print(f"   rule {rule:.4f}  oracle {oracle:.4f}  (exact expected reward per decision)")
    for gamma in (0.0, 0.9):
        closed = []
        started = time.perf_counter()
        for seed in progress_bar(range(seeds), desc=f"DQN gamma={gamma} seeds", enabled=progress):
            timelines = simulate_timelines(sim, 0, sim.rule_send_probability, "rule", seed=seed)
            spec = fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
            with tempfile.TemporaryDirectory() as tmp:
                registry = ModelRegistry(Path(tmp) / "registry")
                metadata = train_and_register(
                    timelines,
                    spec,
                    list(ACTIONS),
                    DqnConfig(gamma=gamma, seed=seed),
                    registry,
                    Path(tmp) / "tb",
                    EpsilonGreedyExploration(epsilon=0.05),
                )
                policy = OnnxPolicy.load(registry, metadata.version)
                value = sim.policy_value(next_day, _send_probability(policy))
            closed.append((value - rule) / (oracle - rule))
        print(
            f"   DQN gamma={gamma}: gap closed {np.mean(closed):.0%} ± {np.std(closed):.0%} over {seeds} seeds "
            f"({(time.perf_counter() - started) / seeds:.1f}s per train+export)"
        )


def _send_probability(policy: OnnxPolicy):
    send = ACTIONS.index("send")

    def probability(features: np.ndarray) -> np.ndarray:
        mask = np.ones((len(features), len(ACTIONS)), np.float32)
        return policy.probabilities(features.astype(np.float32), mask)[:, send]

    return probability


if __name__ == "__main__":
    main()
