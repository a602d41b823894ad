"""Run the monitoring worker, and read its `metrics` topic back for the live view.

`python -m monitoring --config monitor.json` runs a worker from a `MonitoringConfig` JSON
file; `streamrl monitor` launches that in a subprocess and stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError
from tabulate import tabulate

from contracts import ActionKind
from contracts.kafka import PLAINTEXT, KafkaSecurity
from monitoring.app import create_app
from monitoring.config import MonitoringConfig
from monitoring.errors import MonitoringError
from monitoring.metrics import MetricsWindow

logger = logging.getLogger(__name__)


def run_monitor(config: MonitoringConfig) -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT (blocks; exits the process)."""
    import faust

    config.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(config)
    worker = faust.Worker(app, loglevel=config.loglevel, quiet=True)
    worker.execute_from_commandline()


def load_config(path: Path) -> MonitoringConfig:
    """Read a `MonitoringConfig` JSON file, naming the file and the bad key on error."""
    try:
        return MonitoringConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MonitoringError(f"cannot read monitoring config {path}: {exc}", where=str(path)) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise MonitoringError(
            f"invalid monitoring config {path}: key '{key}' has value {first.get('input')!r:.200}: "
            f"{first['msg']} ({exc.error_count()} problem(s)); expected the fields of MonitoringConfig",
            where=str(path),
        ) from exc


def tail_metrics(
    bootstrap_servers: str,
    topic: str,
    follow: bool = False,
    timeout_s: float = 10.0,
    security: KafkaSecurity = PLAINTEXT,
) -> Iterator[MetricsWindow]:
    """Yield every `MetricsWindow` on `topic` from the beginning; with `follow`, keep waiting for more.

    Without `follow` it stops at the fetch high watermarks (the broker's ListOffsets end offsets
    are wrong on Tansu). Uses no consumer group. Raises `MonitoringError` if the topic cannot be
    found or its watermarks are unknown after `timeout_s`.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
            **security.client_settings("kafka_python"),
        )
    except KafkaError as exc:
        raise MonitoringError(
            f"cannot reach Kafka at {bootstrap_servers}: {exc}; is the local stack up? run `streamrl stack up`",
            where=bootstrap_servers,
        ) from exc
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise MonitoringError(
                    f"metrics topic {topic!r} not found at {bootstrap_servers} after {timeout_s}s; "
                    "has the monitor been started (`streamrl monitor`)?",
                    where=topic,
                )
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        while True:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        yield MetricsWindow.model_validate_json(record.value)
                    except ValidationError as exc:
                        logger.warning(
                            "skipping record %s:%d:%d that is not a MetricsWindow: %s",
                            topic,
                            record.partition,
                            record.offset,
                            exc,
                        )
            if follow:
                continue
            highs = {tp: consumer.highwater(tp) for tp in assigned}
            if all(h is not None and consumer.position(tp) >= h for tp, h in highs.items()):
                return
            if time.monotonic() > deadline:
                unknown = sorted(tp.partition for tp, h in highs.items() if h is None)
                raise MonitoringError(
                    f"could not read the high watermark of {topic!r} partitions {unknown} within "
                    f"{timeout_s}s; is the broker at {bootstrap_servers} healthy?",
                    where=topic,
                )
    finally:
        consumer.close()


def latest_revisions(windows: Iterable[MetricsWindow]) -> list[MetricsWindow]:
    """Keep the highest revision of each (model_version, window_start), sorted by time then version."""
    latest: dict[tuple[str, object], MetricsWindow] = {}
    for window in windows:
        key = (window.model_version, window.window_start)
        if key not in latest or window.revision >= latest[key].revision:
            latest[key] = window
    return sorted(latest.values(), key=lambda w: (w.window_start, w.model_version))


def _discrete_actions(window: MetricsWindow) -> str | None:
    discrete = sum(window.action_counts.values())
    if not discrete:
        return None
    return " ".join(
        f"{action}:{count / discrete:.0%}" for action, count in sorted(window.action_counts.items())
    )


def _parametric_actions(window: MetricsWindow) -> str | None:
    summary = window.parametric
    if summary is None:
        return None
    return f"parametric:{summary.decisions} of {summary.mean_candidates:.3g} candidates"


def _continuous_actions(window: MetricsWindow) -> str | None:
    summary = window.continuous
    if summary is None:
        return None
    dims = " ".join(
        f"{name}:{mean:.3g}±{summary.action_std[name]:.3g}" for name, mean in summary.action_mean.items()
    )
    return f"{dims} min_logdens:{summary.min_log_density:.3g}"


# What the "actions" column shows of each kind's decisions (None when the window has none of it).
_ACTION_SUMMARIES: dict[ActionKind, Callable[[MetricsWindow], str | None]] = {
    ActionKind.DISCRETE: _discrete_actions,
    ActionKind.PARAMETRIC: _parametric_actions,
    ActionKind.CONTINUOUS: _continuous_actions,
}


def _format_actions(window: MetricsWindow) -> str:
    shown = (summarize(window) for summarize in _ACTION_SUMMARIES.values())
    return " | ".join(text for text in shown if text is not None) or "-"


_TABLE_HEADERS = (
    "window_start (UTC)",
    "model_version",
    "rev",
    "decisions",
    "actions",
    "rewards",
    "mean_reward",
    "min_prop",
    "alerts",
)
_TEXT_COLUMNS = [0, 1, 4, 8]  # never parsed as numbers (a version such as '1e3' stays text)


def format_metrics_table(windows: Iterable[MetricsWindow]) -> str:
    """Render the latest revision of each window as a plain text table (for `streamrl monitor`)."""
    rows = [
        (
            w.window_start.strftime("%Y-%m-%d %H:%M:%S"),
            w.model_version,
            w.revision,
            w.decisions,
            _format_actions(w),
            w.rewards,
            w.mean_reward,
            w.min_propensity,
            ",".join(a.split(":", 1)[0] for a in w.alerts) or "-",
        )
        for w in latest_revisions(windows)
    ]
    return tabulate(
        rows,
        headers=_TABLE_HEADERS,
        tablefmt="plain",
        missingval="-",
        floatfmt=".4f",
        # Column indices raise IndexError in tabulate when there are no rows (nothing to parse then).
        disable_numparse=_TEXT_COLUMNS if rows else True,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m monitoring --config FILE`."""
    parser = argparse.ArgumentParser(description="Run the streamrl monitoring worker.")
    parser.add_argument("--config", type=Path, required=True, help="MonitoringConfig JSON file")
    args = parser.parse_args(argv)
    run_monitor(load_config(args.config))
