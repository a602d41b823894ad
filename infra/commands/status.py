"""`streamrl status [--app NAME]`: per app, what runs, what serves, when it refreshes, how fresh."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "per app: components, deployed model, refreshes, stream lag and freshness, dead letters"
DESCRIPTION = (
    "For every app `streamrl up` started (or --app NAME): each component's health, the deployed model "
    "and since when, the last and next refresh with their outcome, stream lag and freshness, and the "
    "dead letters of the last hour by reason. Exits 3 when a component has stopped."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app", action="append", default=None, metavar="NAME", help="only this app (repeatable)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="environment YAML (default: the packaged local one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per app instead of text")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from infra.apps import status
    from infra.config import load_config

    statuses = status(load_config(args.config), args.app)
    if not statuses:
        print("no apps: start one with `streamrl up MANIFEST` (`streamrl init NAME` writes a manifest)")
        return 0
    for s in statuses:
        if args.json:
            print(json.dumps(asdict(s), default=str))
            continue
        print(f"app {s.app}: {s.url}")
        for component, state in s.components.items():
            print(f"  {component:<10} {state}")
        since = f" since {s.deployed_since:%Y-%m-%d %H:%M:%S} UTC" if s.deployed_since else ""
        print(f"  model      {s.deployed or 'none deployed (day-0 policy serves)'}{since}")
        print(f"  refresh    last: {s.last_refresh}")
        print(f"             next: {s.next_refresh}")
        age = (
            "no timelines yet"
            if s.newest_row_age_s is None
            else f"last written {s.newest_row_age_s:.0f} s ago"
        )
        lag = (
            "unknown (broker unreachable)"
            if s.stream_lag_events is None
            else f"{s.stream_lag_events} events behind"
        )
        print(f"  stream     {s.timeline_rows} timeline rows, {age}; {lag}")
        print(f"  data       {s.data_health}")
        letters = (
            "unknown (broker unreachable)"
            if s.dead_letters_last_hour is None
            else ", ".join(f"{n}× {reason}" for reason, n in s.dead_letters_last_hour.items()) or "none"
        )
        print(f"  dead letters (last hour): {letters}")
    return 3 if any("STOPPED" in st for s in statuses for st in s.components.values()) else 0
