"""`streamrl up MANIFEST…`: each app's always-on loop on the local stack."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "start the always-on loop of each app manifest on the local stack"
DESCRIPTION = (
    "Validate every manifest, start the local stack if it is down, then per app: its topics, its Feast "
    "repository, serving, the timeline job, feature ingest, the monitor and the refresh scheduler, each "
    "a detached process with its log under <apps_dir>/<app>/logs. `streamrl status` reports on them; "
    "`streamrl down` stops exactly what this started."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST", help="app manifest YAML files")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="environment YAML (default: the packaged local one)",
    )
    parser.add_argument(
        "--acknowledge-change",
        action="store_true",
        help="accept a manifest that changes a running app's action space or forced feature types",
    )


def run(args: argparse.Namespace) -> int:
    from infra.apps import up
    from infra.config import load_config

    config = load_config(args.config)
    result = up(args.manifests, config, config_path=args.config, acknowledge_change=args.acknowledge_change)
    print()
    for app in result.apps:
        print(
            f"{app}: POST {result.urls[app]}/act   (streamrl status --app {app}; logs under {config.apps_dir / app / 'logs'})"
        )
    return 0
