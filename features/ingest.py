"""Online ingest: the decisions topic → Feast, so serving reads each entity's latest context.

At-least-once: offsets are committed only after a batch is pushed; a crash replays the batch,
which is harmless because Feast keeps the newest event_timestamp per entity. Invalid events
are skipped and counted here — dead-lettering them is the stream job's responsibility.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pandas as pd
from pydantic import ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from contracts import DecisionEvent, Topics
from contracts.kafka import PLAINTEXT, KafkaSecurity
from features.store import (
    EVENT_TIMESTAMP,
    FeatureStoreConfig,
    FeatureStoreError,
    build_feature_store,
    push_context_features,
)

__all__ = ["CONSUMER_GROUP", "IngestStats", "run_online_ingest"]

CONSUMER_GROUP = "streamrl-features"
_log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestStats:
    """Running counts, updated after every batch (readable from another thread)."""

    consumed: int = 0
    invalid: int = 0
    pushed_rows: int = 0
    batches: int = 0


def _latest_per_entity(events: list[DecisionEvent], feature_names: list[str], entity: str) -> pd.DataFrame:
    latest: dict[str, DecisionEvent] = {}
    for event in events:
        seen = latest.get(event.entity_id)
        if seen is None or (event.timestamp, event.sequence_number) >= (seen.timestamp, seen.sequence_number):
            latest[event.entity_id] = event
    rows = [
        {
            entity: event.entity_id,
            EVENT_TIMESTAMP: event.timestamp,
            **{name: event.context_features.get(name) for name in feature_names},
        }
        for event in latest.values()
    ]
    frame = pd.DataFrame.from_records(rows, columns=[entity, EVENT_TIMESTAMP, *feature_names])
    frame[feature_names] = frame[feature_names].astype("float64")  # None → NaN = missing
    return frame


def run_online_ingest(
    config: FeatureStoreConfig,
    bootstrap_servers: str,
    topics: Topics,
    stop: threading.Event,
    *,
    batch_size: int = 500,
    poll_timeout_s: float = 0.5,
    offline: bool = True,
    push_retries: int = 3,
    stats: IngestStats | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> IngestStats:
    """Consume decisions until `stop` is set, pushing the latest context per entity each batch.

    A push that still fails after `push_retries` attempts raises `FeatureStoreError` without
    committing, so the batch is consumed again on restart. Pass `stats` to watch progress.
    """
    from kafka import KafkaConsumer

    stats = stats if stats is not None else IngestStats()
    store = build_feature_store(config)
    consumer = KafkaConsumer(
        topics.decisions,
        bootstrap_servers=bootstrap_servers,
        group_id=f"{CONSUMER_GROUP}.{config.project}",  # one group per Feast project (app)
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        max_poll_records=batch_size,
        **security.client_settings("kafka_python"),
    )
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=int(poll_timeout_s * 1000), max_records=batch_size)
            records = [record for batch in polled.values() for record in batch]
            if not records:
                continue
            events: list[DecisionEvent] = []
            invalid = 0
            for record in records:
                try:
                    events.append(DecisionEvent.model_validate_json(record.value or b""))
                except ValidationError:
                    invalid += 1
            if invalid:
                _log.warning(
                    "skipped %d invalid decision events on %s (dead-lettered by the stream job)",
                    invalid,
                    topics.decisions,
                )
            frame = _latest_per_entity(events, config.feature_names, config.entity_name)
            pushed = _push_with_retries(
                store, frame, offline=offline, retries=push_retries, feature_view=config.feature_view
            )
            consumer.commit()
            stats.consumed += len(records)
            stats.invalid += invalid
            stats.pushed_rows += pushed
            stats.batches += 1
    finally:
        consumer.close(autocommit=False)
    return stats


def _push_with_retries(store, frame: pd.DataFrame, *, offline: bool, retries: int, feature_view: str) -> int:
    """Push `frame`, retrying a `FeatureStoreError` up to `retries` attempts in all (0.4 s, 0.8 s, ... apart)."""
    attempts = max(retries, 1)

    def log_failure(state: RetryCallState) -> None:
        _log.warning(
            "push attempt %d/%d failed: %s", state.attempt_number, attempts, state.outcome.exception()
        )

    retrying = Retrying(
        retry=retry_if_exception_type(FeatureStoreError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.4, exp_base=2),
        before_sleep=log_failure,
        reraise=True,
    )
    try:
        return retrying(push_context_features, store, frame, offline=offline, feature_view=feature_view)
    except FeatureStoreError as exc:
        store_name = f" {exc.store!r}" if exc.store else ""
        raise FeatureStoreError(
            f"online ingest gave up after {attempts} attempts to push {len(frame)} entities to feature view "
            f"'{feature_view}': {exc}; the batch stays uncommitted and is read again on restart: check that "
            f"the online store{store_name} is reachable (`streamrl stack up` starts the local one)",
            store=exc.store,
        ) from exc
