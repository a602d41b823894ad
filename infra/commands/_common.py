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
    parser.add_argument(
        "--app",
        default=None,
        metavar="MANIFEST|NAME",
        help="the app: a manifest file, or the name of an app `streamrl up` started; its topics, folder "
        "(<apps_dir>/<app>, unless --run-dir), features, algorithm and gate",
    )


def environment_from(args: argparse.Namespace):  # -> Environment (imported lazily: it imports every stage)
    from dataclasses import replace

    from infra.apps import resolve_app
    from infra.config import load_config
    from infra.environment import Environment

    config = load_config(args.config)
    if getattr(args, "app", None) is None:
        return Environment.from_config(config, args.run_dir)
    env = Environment.for_app(config, resolve_app(args.app, config))
    return replace(env, run_dir=args.run_dir.resolve()) if args.run_dir is not None else env
