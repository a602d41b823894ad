"""`streamrl down [APP…]`: stop exactly what `streamrl up` started."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "stop what `streamrl up` started (all apps, or the named ones)"
DESCRIPTION = (
    "Stop each app's processes recorded by `streamrl up` (never anything found by name), and the local "
    "stack too when `up` started it and no app is left running."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("apps", nargs="*", metavar="APP", help="app names (default: every app)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="environment YAML (default: the packaged local one)",
    )


def run(args: argparse.Namespace) -> int:
    from infra.apps import down
    from infra.config import load_config

    stopped = down(load_config(args.config), args.apps)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0
