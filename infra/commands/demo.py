"""`streamrl demo`: the notifications example app through `streamrl up`, for N simulated days."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the notifications example through `streamrl up` for N simulated days"
DESCRIPTION = (
    "`streamrl up` apps/notifications/manifest.yaml (a copy that refreshes after every simulated day) with "
    "the run folder as apps_dir, run the app's simulator once per day, wait for the scheduler's refresh of "
    "each day, print the table and write <run folder>/summary.json; then `streamrl down` the app."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="environment YAML (default: the packaged infra/configs/local.yaml)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the demo's folder, deleted first (default: the config's run_dir, runs/demo)",
    )
    parser.add_argument(
        "--days", type=int, default=None, help="simulated days (default: the config's demo.days)"
    )
    parser.add_argument(
        "--users", type=int, default=None, help="simulated users (default: the config's demo.users)"
    )


def run(args: argparse.Namespace) -> int:
    from infra.config import load_config
    from infra.demo import DemoPlan, run_demo
    from infra.environment import Environment

    config = load_config(args.config)
    plan = DemoPlan.from_config(config.demo, days=args.days, users=args.users)
    run_demo(Environment.from_config(config, args.run_dir), plan)
    return 0
