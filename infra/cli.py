"""`streamrl` command line: argparse subcommands, one small module per command in `infra/commands/`.

Each command module provides `HELP` (its line in `streamrl --help`), `DESCRIPTION`,
`add_arguments(parser)` and `run(args) -> int`. The modules import only cheap things at the top
and a command's heavy imports (torch, Spark, Feast, onnxruntime) inside its `run`, so building
the parser stays cheap and `streamrl stack up` never imports torch. Add a command by writing its
module and adding one line to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from contracts import StreamrlError
from infra.commands import (
    demo,
    deploy,
    down,
    features,
    init,
    monitor,
    refresh,
    rollback,
    schedule,
    serve,
    stack,
    status,
    stream,
    train,
    up,
)


class Command(Protocol):
    """What a module in `infra/commands/` provides."""

    HELP: str
    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# Listed in `streamrl --help` in this order: the stack, the loop's long-running jobs, then one-off steps.
COMMANDS: dict[str, Command] = {
    "init": init,
    "up": up,
    "status": status,
    "down": down,
    "stack": stack,
    "demo": demo,
    "stream": stream,
    "serve": serve,
    "monitor": monitor,
    "train": train,
    "refresh": refresh,
    "schedule": schedule,
    "deploy": deploy,
    "rollback": rollback,
    "features": features,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrl",
        description="Streaming continuous-learning RL: log, timelines, features, train, evaluate, serve.",
        epilog="`streamrl COMMAND --help` shows a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.HELP, description=command.DESCRIPTION))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamrl` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except StreamrlError as exc:
        print(f"streamrl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
