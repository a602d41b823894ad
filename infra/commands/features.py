"""`streamrl features`: freshness of the feature store, and acknowledging a refused spec.

streamrl features status             freshness per feature view (offline history, online store)
streamrl features ack <spec-version> publish a spec the refresh refused (type change, large shift)
streamrl features ingest             push each entity's latest logged context to the store (until SIGTERM)
"""

from __future__ import annotations

import argparse
from datetime import datetime

from tabulate import tabulate

from infra.commands._common import add_environment_arguments, environment_from

HELP = "feature store freshness; acknowledge a refused spec"
DESCRIPTION = "Feature store freshness and spec acknowledgements."

_HEADERS = (
    "feature view",
    "ttl",
    "offline rows",
    "newest offline",
    "online",
    "newest online",
    "age",
    "state",
)
_ALIGN = ("left", "right", "right", "left", "right", "left", "right", "left")  # counts and durations right


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = sub.add_parser(
        "status",
        help="freshness per feature view and the latest published spec",
        description="Freshness per feature view (offline history, online store); exits 1 when stale.",
    )
    add_environment_arguments(status)
    ack = sub.add_parser(
        "ack",
        help="accept a refused normalization spec so the next refresh publishes it",
        description="Publish a normalization spec the refresh refused (type change, large shift).",
    )
    add_environment_arguments(ack)
    ack.add_argument("version", help="spec version, e.g. spec-1a2b3c4d5e6f (printed by the refused refresh)")
    ack.add_argument("--note", default="", help="why the change is acceptable (kept in acknowledged.json)")
    ingest = sub.add_parser(
        "ingest",
        help="push each entity's latest logged context to the feature store (until SIGTERM)",
        description="Consume the decisions topic and push each entity's latest context features to Feast "
        "(Redis online, parquet offline), so serving can look them up by entity; runs until SIGTERM/SIGINT.",
    )
    add_environment_arguments(ingest)


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
    if args.action == "ingest":
        return _ingest(env)
    if args.action == "ack":
        path = acknowledge_spec(env.specs_dir, args.version, args.note)
        print(
            f"acknowledged {args.version} and published it (recorded in {path}); the next refresh diffs against it"
        )
        return 0
    config = env.feature_store_config()
    status = feature_view_status(config)
    row = (
        status.feature_view,
        _age(status.ttl_s),
        status.offline_rows,
        _when(status.offline_newest),
        status.online_entities,
        _when(status.online_newest),
        _age(status.age_s),
        "STALE (older than ttl)" if status.stale else "fresh",
    )
    print(tabulate([row], headers=_HEADERS, tablefmt="plain", colalign=_ALIGN))
    spec = latest_spec(env.specs_dir)
    print(f"latest published spec: {spec.version + ' (' + _when(spec.created_at) + ')' if spec else 'none'}")
    pending = sorted(p.name for p in (env.specs_dir / "pending").glob("normalization_*.json"))
    if pending:
        print(f"refused specs waiting for `streamrl features ack`: {', '.join(pending)}")
    return 1 if status.stale else 0


def _ingest(env) -> int:  # env: infra.environment.Environment
    import signal
    import threading

    from features import build_feature_store, run_online_ingest

    config = env.feature_store_config()
    build_feature_store(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"feature ingest running: {env.config.topics.decisions} -> feature view {config.feature_view}",
        flush=True,
    )
    stats = run_online_ingest(
        config, env.bootstrap_servers, env.config.topics, stop, batch_size=2000, security=env.kafka_security
    )
    print(
        f"feature ingest stopped: {stats.consumed} decisions consumed, {stats.pushed_rows} rows pushed",
        flush=True,
    )
    return 0
