"""`streamrl stack up|down|status`: the local Kafka broker, Redis and (durable mode) S3 store."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tabulate import tabulate

from infra.stack_config import BrokerStorage, StackConfig

if TYPE_CHECKING:
    from infra.stack import ServiceStatus

HELP = "start, stop or inspect the local stack (Kafka broker, Redis, S3)"
DESCRIPTION = (
    "Manage the local stack. Settings come from STREAMRL_* variables "
    "(STREAMRL_BROKER_PORT, STREAMRL_REDIS_PORT, STREAMRL_BROKER_STORAGE, STREAMRL_STATE_DIR, ...)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--storage",
        choices=[s.value for s in BrokerStorage],
        help="broker storage: memory (lost on stop) or s3 (durable, local SeaweedFS); "
        "default STREAMRL_BROKER_STORAGE or memory",
    )
    parser.add_argument("--state-dir", help="where PID files, logs and data live (default .streamrl/stack)")


def run(args: argparse.Namespace) -> int:
    from infra.stack import LocalStack

    overrides: dict[str, object] = {}
    if args.storage:
        overrides["broker_storage"] = args.storage
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    config = StackConfig.from_env(**overrides)
    stack = LocalStack(config)
    if args.action == "up":
        print(format_status(stack.up()))
        print(f"\nkafka bootstrap servers: {config.bootstrap_servers}\nredis url: {config.redis_url}")
        return 0
    if args.action == "down":
        stopped = stack.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    statuses = stack.status()
    print(format_status(statuses))
    return 0 if all(s.healthy for s in statuses) else 3


def format_status(statuses: Sequence[ServiceStatus]) -> str:
    """One row per service: name, state (healthy, unhealthy or stopped), pid, address, log file."""
    rows = [
        (
            s.name,
            "healthy" if s.healthy else ("unhealthy" if s.pid is not None else "stopped"),
            s.pid,
            s.address,
            str(s.log_path),
        )
        for s in statuses
    ]
    return tabulate(
        rows,
        headers=("SERVICE", "STATE", "PID", "ADDRESS", "LOG"),
        tablefmt="plain",
        missingval="-",
        disable_numparse=True,
    )
