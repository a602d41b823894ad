"""Validation of raw Kafka records into decisions, rewards or dead letters (runs inside Spark tasks).

Every record is validated on its own with the pydantic models in `contracts.events`, so a bad
record never affects a good one; a bad one becomes a row of kind "dead" carrying a condensed reason
and the original payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from pydantic import ValidationError
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from contracts import DecisionEvent, RewardEvent

KIND_DECISION = "decision"
KIND_REWARD = "reward"
KIND_DEAD = "dead"

_FEATURE_MAP = MapType(StringType(), DoubleType(), valueContainsNull=False)

PARSED_SCHEMA = StructType(
    [
        StructField("kind", StringType(), False),
        StructField("src_topic", StringType(), False),
        StructField("src_partition", IntegerType(), False),
        StructField("src_offset", LongType(), False),
        StructField("payload", StringType(), True),
        StructField("reason", StringType(), True),
        StructField("request_id", StringType(), True),
        StructField("entity_id", StringType(), True),
        StructField("mdp_id", StringType(), True),
        StructField("sequence_number", LongType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("ds", StringType(), True),
        StructField("state_features", _FEATURE_MAP, True),
        StructField("possible_actions", ArrayType(StringType(), containsNull=False), True),
        StructField("action", StringType(), True),
        StructField("action_probability", DoubleType(), True),
        StructField("model_version", StringType(), True),
        StructField("reward", DoubleType(), True),
        StructField("metrics", _FEATURE_MAP, True),
    ]
)

_ARROW_SCHEMA = to_arrow_schema(PARSED_SCHEMA, timezone="UTC")


def condense_validation_error(error: ValidationError) -> str:
    """One line per problem, `field.path: message`, e.g. `action_probability: ... got 1.5`."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "<record>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_record(topic: str, value: bytes | None, decisions_topic: str, rewards_topic: str) -> dict[str, Any]:
    """Classify one record: the columns of `PARSED_SCHEMA` that apply (without source position)."""
    if value is None or len(value) == 0:
        return {"kind": KIND_DEAD, "reason": "empty payload: expected a JSON event"}
    try:
        if topic == decisions_topic:
            event = DecisionEvent.model_validate_json(value)
        elif topic == rewards_topic:
            reward = RewardEvent.model_validate_json(value)
        else:
            return {
                "kind": KIND_DEAD,
                "reason": f"unexpected topic {topic!r}: not a decisions or rewards topic",
            }
    except ValidationError as exc:
        kind = "DecisionEvent" if topic == decisions_topic else "RewardEvent"
        return {"kind": KIND_DEAD, "reason": f"invalid {kind}: {condense_validation_error(exc)}"}
    if topic == decisions_topic:
        return {
            "kind": KIND_DECISION,
            "request_id": event.request_id,
            "entity_id": event.entity_id,
            "mdp_id": event.mdp_id,
            "sequence_number": event.sequence_number,
            "timestamp": event.timestamp,
            "ds": event.timestamp.strftime("%Y-%m-%d"),
            "state_features": [(k, v) for k, v in event.context_features.items() if v is not None],
            "possible_actions": list(event.possible_actions),
            "action": event.action,
            "action_probability": event.action_probability,
            "model_version": event.model_version,
        }
    return {
        "kind": KIND_REWARD,
        "request_id": reward.request_id,
        "timestamp": reward.timestamp,
        "reward": reward.reward,
        "metrics": list(reward.metrics.items()),
    }


def make_parser(
    decisions_topic: str, rewards_topic: str
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The `mapInArrow` function turning `KAFKA_RECORD_SCHEMA` batches into `PARSED_SCHEMA` ones."""

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        names = _ARROW_SCHEMA.names
        for batch in batches:
            columns: dict[str, list[Any]] = {name: [] for name in names}
            for record in batch.to_pylist():
                value = record["value"]
                row = parse_record(record["topic"], value, decisions_topic, rewards_topic)
                row["src_topic"] = record["topic"]
                row["src_partition"] = record["partition"]
                row["src_offset"] = record["offset"]
                row["payload"] = value.decode("utf-8", errors="replace") if value is not None else ""
                for name in names:
                    columns[name].append(row.get(name))
            yield pa.RecordBatch.from_pydict(columns, schema=_ARROW_SCHEMA)

    return parse_batches
