"""Arguments every run-level command shares: which environment file, which run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.config import DEFAULT_CONFIG, load_config


def add_environment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"environment YAML (default: {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default: the config's run_dir)"
    )


def environment_from(args: argparse.Namespace):  # -> Environment (imported lazily: it imports every stage)
    from infra.environment import Environment

    return Environment.from_config(load_config(args.config), args.run_dir)
