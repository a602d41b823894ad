"""Read back what serving logged: every record of a topic from the beginning (fetch-based, see Tansu notes)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from contracts import DecisionEvent


def read_decisions(
    bootstrap_servers: str, topic: str, expected: set[str], timeout_s: float = 30.0
) -> dict[str, DecisionEvent]:
    """Decisions on `topic` keyed by request id, polling until all `expected` ids arrived or timeout."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        assert partitions, f"topic {topic} has no partitions"
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        found: dict[str, DecisionEvent] = {}
        while not expected <= found.keys() and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = DecisionEvent.model_validate_json(record.value)
                    assert record.key == event.mdp_id.encode(), "decisions are keyed by mdp_id"
                    found[event.request_id] = event
        return found
    finally:
        consumer.close()
