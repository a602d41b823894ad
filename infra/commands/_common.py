"""Arguments every run-level command shares: which environment file, which run folder.

Cheap to import on purpose: `infra.config` imports every stage (torch included), so it is loaded
only when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_environment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="environment YAML (default: the packaged infra/configs/local.yaml)",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, metavar="DIR", help="run folder (default: the config's run_dir)"
    )


def environment_from(args: argparse.Namespace):  # -> Environment (imported lazily: it imports every stage)
    from infra.config import load_config
    from infra.environment import Environment

    return Environment.from_config(load_config(args.config), args.run_dir)
