"""`streamrl monitor`: live per-model-version metrics; `--worker` runs the faust worker itself."""

from __future__ import annotations

import argparse
import time

from infra.commands._common import add_environment_arguments, environment_from

HELP = "show live metrics per model version (--worker runs the agents)"
DESCRIPTION = "Show streaming metrics per model version, read back from the metrics topic."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument("--worker", action="store_true", help="run the faust monitoring worker (blocks)")
    parser.add_argument("--once", action="store_true", help="print the current table once and exit")


def run(args: argparse.Namespace) -> int:
    from monitoring.run import format_metrics_table, latest_revisions, run_monitor, tail_metrics

    env = environment_from(args)
    config = env.monitoring_config()
    if args.worker:
        run_monitor(config)
        return 0
    topic = env.config.topics.metrics
    if args.once:
        windows = tail_metrics(env.bootstrap_servers, topic, security=env.kafka_security)
        print(format_metrics_table(latest_revisions(windows)))
        return 0
    seen = []
    try:
        for window in tail_metrics(env.bootstrap_servers, topic, follow=True, security=env.kafka_security):
            seen.append(window)
            print("\033[2J\033[H" + time.strftime("%H:%M:%S") + f"  metrics topic '{topic}'\n")
            print(format_metrics_table(latest_revisions(seen)[-30:]), flush=True)
    except KeyboardInterrupt:
        pass
    return 0
