"""`streamrl features`: freshness of the feature store, and acknowledging a refused spec.

streamrl features status             freshness per feature view (offline history, online store)
streamrl features ack <spec-version> publish a spec the refresh refused (type change, large shift)
"""

from __future__ import annotations

import argparse
from datetime import datetime

from infra.commands._common import add_environment_arguments, environment_from


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Feature store freshness and spec acknowledgements."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    status = sub.add_parser("status", help="freshness per feature view and the latest published spec")
    add_environment_arguments(status)
    ack = sub.add_parser("ack", help="accept a refused normalization spec so the next refresh publishes it")
    add_environment_arguments(ack)
    ack.add_argument("version", help="spec version, e.g. spec-1a2b3c4d5e6f (printed by the refused refresh)")
    ack.add_argument("--note", default="", help="why the change is acceptable (kept in acknowledged.json)")
    return parser


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "no data"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def run(args: argparse.Namespace) -> int:
    from features import acknowledge_spec, feature_view_status, latest_spec

    env = environment_from(args)
    if args.action == "ack":
        path = acknowledge_spec(env.specs_dir, args.version, args.note)
        print(
            f"acknowledged {args.version} and published it (recorded in {path}); the next refresh diffs against it"
        )
        return 0
    config = env.feature_store_config()
    status = feature_view_status(config)
    print(f"{'feature view':<14} {'ttl':>8} {'offline rows':>12}  {'newest offline':<24} {'online':>8}  "
          f"{'newest online':<24} {'age':>9}  state")  # fmt: skip
    print(
        f"{status.feature_view:<14} {_age(status.ttl_s):>8} {status.offline_rows:>12}  "
        f"{_when(status.offline_newest):<24} {status.online_entities:>8}  {_when(status.online_newest):<24} "
        f"{_age(status.age_s):>9}  {'STALE (older than ttl)' if status.stale else 'fresh'}"
    )
    spec = latest_spec(env.specs_dir)
    print(f"latest published spec: {spec.version + ' (' + _when(spec.created_at) + ')' if spec else 'none'}")
    pending = sorted(p.name for p in (env.specs_dir / "pending").glob("normalization_*.json"))
    if pending:
        print(f"refused specs waiting for `streamrl features ack`: {', '.join(pending)}")
    return 1 if status.stale else 0
