"""Run every benchmark module (or the ones named on the command line) and print their figures."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = {
    "pendulum": "benchmarks.pendulum",
    "features_bench": "benchmarks.features_bench",
    "learner_on_simulator": "benchmarks.learner_on_simulator",
    "cpe_speed": "benchmarks.cpe_speed",
    "cpe_accuracy": "benchmarks.cpe_accuracy",
    "training_throughput": "benchmarks.training_throughput",
    "d3rlpy_throughput": "benchmarks.d3rlpy_throughput",
    "cartpole_offline": "benchmarks.cartpole_offline",
    "bandit_regret": "benchmarks.bandit_regret",
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}")
        started = time.perf_counter()
        importlib.import_module(BENCHMARKS[name]).main()
        print(f"   ({time.perf_counter() - started:.1f}s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
