"""Online ingest from a real decisions topic into Feast/Redis, with invalid events and offset commits."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from contracts import DecisionEvent
from features import IngestStats, OnlineFeatureReader, run_online_ingest

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _decision(entity: str, seq: int, minutes: int, features: dict[str, float | None]) -> DecisionEvent:
    return DecisionEvent(
        request_id=uuid.uuid4().hex,
        entity_id=entity,
        mdp_id=f"{entity}-mdp",
        sequence_number=seq,
        timestamp=T0 + timedelta(minutes=minutes),
        context_features=features,
        possible_actions=["email", "none"],
        action="email",
        action_probability=0.5,
        model_version="m1",
    )


def _produce(bootstrap: str, topic: str, payloads: list[bytes], keys: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in zip(keys, payloads, strict=True):
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=10)
    finally:
        producer.close()


def _run_until(config, local_stack, topics, consumed: int, timeout_s: float = 40.0) -> IngestStats:
    stats, stop = IngestStats(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_online_ingest(
                config,
                local_stack.bootstrap_servers,
                topics,
                stop,
                batch_size=4,
                poll_timeout_s=0.2,
                stats=stats,
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while stats.consumed < consumed and not errors and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # anything beyond `consumed` would show up now
    stop.set()
    thread.join(timeout=15)
    assert not errors, errors
    assert not thread.is_alive()
    return stats


def test_ingest_pushes_latest_context_per_entity_and_commits(
    local_stack, topics, feast_config, feast_store
) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    events = [
        _decision(a, 0, 0, {"f_age": 30.0, "f_clicks": 1.0}),
        _decision(b, 0, 0, {"f_age": 40.0, "f_hour": 9.0, "unknown_feature": 5.0}),
        _decision(a, 2, 10, {"f_age": 31.0, "f_clicks": None}),  # newest for a
        _decision(a, 1, 5, {"f_age": 99.0, "f_clicks": 99.0}),  # late, older: must not win
    ]
    payloads = [e.to_json_bytes() for e in events] + [b"not json", b'{"schema_version": 1}']
    keys = [e.mdp_id.encode() for e in events] + [b"x", b"y"]
    _produce(local_stack.bootstrap_servers, topics.decisions, payloads, keys)

    stats = _run_until(feast_config, local_stack, topics, consumed=len(payloads))
    assert (stats.consumed, stats.invalid) == (6, 2)
    assert stats.pushed_rows >= 2

    reader = OnlineFeatureReader(feast_store, feast_config)
    assert reader.get([b, a]) == [
        {"f_age": 40.0, "f_clicks": None, "f_hour": 9.0},
        {"f_age": 31.0, "f_clicks": None, "f_hour": None},
    ]

    # Offsets were committed: a second run consumes only what was produced after the first.
    later = _decision(b, 1, 20, {"f_age": 41.0})
    _produce(local_stack.bootstrap_servers, topics.decisions, [later.to_json_bytes()], [b"b"])
    stats = _run_until(feast_config, local_stack, topics, consumed=1)
    assert (stats.consumed, stats.invalid) == (1, 0)
    assert reader.get([b])[0]["f_age"] == 41.0
