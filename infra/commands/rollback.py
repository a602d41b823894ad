"""`streamrl rollback`: move the deploy pointer back to the previously deployed model."""

from __future__ import annotations

import argparse

from infra.commands._common import add_environment_arguments, environment_from

HELP = "restore the previously deployed model"
DESCRIPTION = "Restore the previously deployed model; serving follows within its poll interval."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument("--reason", default="manual rollback", help="recorded in the deployment history")


def run(args: argparse.Namespace) -> int:
    from trainer import ModelRegistry

    env = environment_from(args)
    registry = ModelRegistry(env.registry_dir)
    before = registry.deployed()
    now = registry.rollback(args.reason)
    print(f"rolled back: {before} -> {now} (serving picks it up within its poll interval)")
    return 0
