"""`streamrl` command line: one small module per subcommand, imported only when that command runs.

Add a command by writing `infra/commands/<name>.py` with `build_parser(prog) -> ArgumentParser` and
`run(args) -> int`, then adding one line to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from contracts import StreamrlError


class Command(Protocol):
    """What a module in `infra/commands/` provides."""

    def build_parser(self, prog: str) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Modules are imported lazily: `streamrl stack up` never imports torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("infra.commands.stack", "start, stop or inspect the local stack (Kafka broker, Redis, S3)"),
    "demo": ("infra.commands.demo", "run the whole loop on the local stack with the simulated app"),
    "stream": ("infra.commands.stream", "run the Spark timeline job"),
    "serve": ("infra.commands.serve", "run the HTTP action service"),
    "monitor": ("infra.commands.monitor", "show live metrics per model version (--worker runs the agents)"),
    "train": ("infra.commands.train", "train one run from its YAML and register the model (not deployed)"),
    "refresh": ("infra.commands.refresh", "train, evaluate, gate and deploy a new model (nightly)"),
    "rollback": ("infra.commands.rollback", "restore the previously deployed model"),
    "features": ("infra.commands.features", "feature store freshness; acknowledge a refused spec"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrl",
        description="Streaming continuous-learning RL: log, timelines, features, train, evaluate, serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="see the list below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (COMMAND --help)")
    return parser


def load_command(name: str) -> Command:
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamrl` console script; returns the exit code."""
    top = build_parser().parse_args(argv)
    command = load_command(top.command)
    args = command.build_parser(f"streamrl {top.command}").parse_args(top.args)
    try:
        return command.run(args)
    except StreamrlError as exc:
        print(f"streamrl {top.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
