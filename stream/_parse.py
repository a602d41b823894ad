"""Validation of raw Kafka records into decisions, rewards or dead letters (runs inside Spark tasks).

Every record is validated on its own with the pydantic models in `contracts.events`, so a bad
record never affects a good one; a bad one becomes a row of kind "dead" carrying a condensed reason
and the original payload. A decision of any action kind becomes one row: `action_kind` says which
of the kind columns (`contracts.actions.KIND_COLUMNS`) it fills, `_KIND_PARSERS` fills them, and
the columns of other kinds stay null (so `action` and `action_probability` are null for continuous
decisions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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

from contracts import DecisionEvent, RewardEvent, reward_value
from contracts.actions import (
    ACTION_FEATURES_COLUMN,
    ACTION_LOG_DENSITY_COLUMN,
    ACTION_VECTOR_COLUMN,
    POSSIBLE_ACTION_FEATURES_COLUMN,
    ActionKind,
)

KIND_DECISION = "decision"
KIND_REWARD = "reward"
KIND_DEAD = "dead"

_FEATURE_MAP = MapType(StringType(), DoubleType(), valueContainsNull=False)
_FEATURE_MAP_LIST = ArrayType(_FEATURE_MAP, containsNull=False)

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
        StructField("action_kind", StringType(), True),
        StructField("action", StringType(), True),
        StructField("action_probability", DoubleType(), True),
        StructField(ACTION_FEATURES_COLUMN, _FEATURE_MAP, True),
        StructField(POSSIBLE_ACTION_FEATURES_COLUMN, _FEATURE_MAP_LIST, True),
        StructField(ACTION_VECTOR_COLUMN, ArrayType(DoubleType(), containsNull=False), True),
        StructField(ACTION_LOG_DENSITY_COLUMN, DoubleType(), True),
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


def _present(features: dict[str, float | None]) -> list[tuple[str, float]]:
    """A feature map as Arrow map items, missing (None) values dropped: absent keys mean missing."""
    return [(name, value) for name, value in features.items() if value is not None]


def _chosen_columns(event: DecisionEvent) -> dict[str, Any]:
    return {"action": event.action, "action_probability": event.action_probability}


def _parametric_columns(event: DecisionEvent) -> dict[str, Any]:
    candidates = [_present(features) for features in event.candidate_features or []]
    return {
        **_chosen_columns(event),
        ACTION_FEATURES_COLUMN: candidates[event.possible_actions.index(event.action)],
        POSSIBLE_ACTION_FEATURES_COLUMN: candidates,
    }


def _continuous_columns(event: DecisionEvent) -> dict[str, Any]:
    return {
        ACTION_VECTOR_COLUMN: list(event.action_vector or []),
        ACTION_LOG_DENSITY_COLUMN: event.action_log_density,
    }


# The kind columns each action kind fills from a validated event (`DecisionEvent` checked the fields).
_KIND_PARSERS: dict[ActionKind, Callable[[DecisionEvent], dict[str, Any]]] = {
    ActionKind.DISCRETE: _chosen_columns,
    ActionKind.PARAMETRIC: _parametric_columns,
    ActionKind.CONTINUOUS: _continuous_columns,
}


def parse_record(
    topic: str,
    value: bytes | None,
    decisions_topic: str,
    rewards_topic: str,
    reward_weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Classify one record: the columns of `PARSED_SCHEMA` that apply (without source position).

    A reward's `reward` column is `contracts.reward_value` under the app's `reward_weights`."""
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
            "state_features": _present(event.context_features),
            "possible_actions": list(event.possible_actions),
            "action_kind": event.action_kind.value,
            "model_version": event.model_version,
            **_KIND_PARSERS[event.action_kind](event),
        }
    value_of_reward = reward_value(reward, reward_weights)
    if value_of_reward is None:
        return {
            "kind": KIND_DEAD,
            "reason": "invalid RewardEvent: no `reward`, and the app defines no reward metrics to compute "
            "it from (manifest `reward.metrics`)",
        }
    return {
        "kind": KIND_REWARD,
        "request_id": reward.request_id,
        "timestamp": reward.timestamp,
        "reward": value_of_reward,
        "metrics": list(reward.metrics.items()),
    }


def make_parser(
    decisions_topic: str, rewards_topic: str, reward_weights: Mapping[str, float] | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The `mapInArrow` function turning `KAFKA_RECORD_SCHEMA` batches into `PARSED_SCHEMA` ones."""

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        names = _ARROW_SCHEMA.names
        for batch in batches:
            columns: dict[str, list[Any]] = {name: [] for name in names}
            for record in batch.to_pylist():
                value = record["value"]
                row = parse_record(record["topic"], value, decisions_topic, rewards_topic, reward_weights)
                row["src_topic"] = record["topic"]
                row["src_partition"] = record["partition"]
                row["src_offset"] = record["offset"]
                row["payload"] = value.decode("utf-8", errors="replace") if value is not None else ""
                for name in names:
                    columns[name].append(row.get(name))
            yield pa.RecordBatch.from_pydict(columns, schema=_ARROW_SCHEMA)

    return parse_batches
