"""`streamrl stack up|down|status`: the local Kafka broker, Redis and (durable mode) S3 store."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from infra.stack import LocalStack, ServiceStatus
from infra.stack_config import BrokerStorage, StackConfig


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Manage the local stack. Settings come from STREAMRL_* variables "
        "(STREAMRL_BROKER_PORT, STREAMRL_REDIS_PORT, STREAMRL_BROKER_STORAGE, STREAMRL_STATE_DIR, ...).",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--storage",
        choices=[s.value for s in BrokerStorage],
        help="broker storage: memory (lost on stop) or s3 (durable, local SeaweedFS); "
        "default STREAMRL_BROKER_STORAGE or memory",
    )
    parser.add_argument("--state-dir", help="where PID files, logs and data live (default .streamrl/stack)")
    return parser


def run(args: argparse.Namespace) -> int:
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
    """A small aligned table: service, state, pid, address, log."""
    rows = [("SERVICE", "STATE", "PID", "ADDRESS", "LOG")]
    for s in statuses:
        state = "healthy" if s.healthy else ("unhealthy" if s.pid is not None else "stopped")
        rows.append((s.name, state, str(s.pid or "-"), s.address, str(s.log_path)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
