"""`streamrl demo`: start the local stack and run the whole loop for N simulated days."""

from __future__ import annotations

import argparse

from infra.commands._common import add_environment_arguments

HELP = "run the whole loop on the local stack with the simulated app"
DESCRIPTION = "Run the full loop on the embedded local stack with the simulated app."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument(
        "--days", type=int, default=None, help="simulated days (default: the config's demo.days)"
    )
    parser.add_argument("--users", type=int, default=None, help="simulated users (default: the config's)")


def run(args: argparse.Namespace) -> int:
    from infra.config import load_config
    from infra.demo import run_demo
    from infra.environment import Environment

    overrides: dict = {"demo": {}}
    if args.days is not None:
        overrides["demo"]["days"] = args.days
    if args.users is not None:
        overrides["demo"]["simulator"] = {"n_users": args.users}
    config = load_config(args.config, overrides=overrides)
    run_demo(Environment.from_config(config, args.run_dir))
    return 0
