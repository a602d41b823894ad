"""Run every benchmark module (or the ones named on the command line) and print their figures.

`python -m benchmarks NAME [NAME ...] [-- OPTIONS]`: options after the names (the first argument
starting with `-`) go to the one named benchmark's `main(argv)` (e.g. `served_loop --family
pendulum`). Each benchmark's own output ends with its JSON line; the wall time goes to stderr.
"""

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
    "cpe_coverage": "benchmarks.cpe_coverage",
    "training_throughput": "benchmarks.training_throughput",
    "d3rlpy_throughput": "benchmarks.d3rlpy_throughput",
    "cartpole_offline": "benchmarks.cartpole_offline",
    "bandit_regret": "benchmarks.bandit_regret",
    "served_loop": "benchmarks.served_loop",
    "serving_load": "benchmarks.serving_load",
    "stream_throughput": "benchmarks.stream_throughput",
    "training_data": "benchmarks.training_data",
}


def main(argv: list[str]) -> int:
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split] or list(BENCHMARKS), [a for a in argv[split:] if a != "--"]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    if options and len(names) != 1:
        print(f"options {options} need exactly one benchmark name, got {names}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(BENCHMARKS[name])
        module.main(options) if options else module.main()
        print(f"   {name}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
