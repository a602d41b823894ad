"""`streamrl stream`: the Spark Structured Streaming timeline job, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import re
import signal
import threading

from infra.commands._common import add_environment_arguments, environment_from

HELP = "run the Spark timeline job (until SIGTERM)"
DESCRIPTION = "Build MDP timelines from the event topics, until SIGTERM/SIGINT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument(
        "--master", default="local[2]", help="Spark master (default local[2]; a cluster URL too)"
    )


def run(args: argparse.Namespace) -> int:
    from stream import ensure_topics, start_timeline_query
    from stream.spark import build_spark_session

    env = environment_from(args)
    ensure_topics(env.bootstrap_servers, env.config.topics, security=env.kafka_security)
    spark = build_spark_session(args.master, "streamrl-timelines")
    query = start_timeline_query(
        spark, env.stream_config(), env.bootstrap_servers, env.config.topics, security=env.kafka_security
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"timeline job running: output {env.stream_config().output_dir}", flush=True)
    while not stop.is_set() and query.isActive:
        stop.wait(1.0)
    exception = query.exception()
    query.stop()
    spark.stop()
    if exception is not None:
        print(
            f"timeline job failed: {failure_cause(str(exception))}\n\nSpark's report:\n{exception}",
            flush=True,
        )
        return 1
    return 0


_RAISED = re.compile(r"^\s*([\w.]+(?:Error|Exception): .*)$")


def failure_cause(report: str) -> str:
    """The line that says what went wrong: the last exception raised in the batch's Python code,
    ahead of Spark's query description (else the report's first line)."""
    head = report.split("=== Streaming Query ===", 1)[0]
    raised = [m.group(1) for line in head.splitlines() if (m := _RAISED.match(line))]
    return raised[-1] if raised else report.strip().splitlines()[0] if report.strip() else report
