"""Validation of raw Kafka records into decisions, rewards or dead letters (runs inside Spark tasks).

Every record is judged on its own by the rules of the pydantic models in `contracts.events`, so a
bad record never affects a good one: most records column-wise (`stream._fast_parse`), the rest one
by one with pydantic (`parse_record`); a bad one becomes a row of kind "dead" carrying pydantic's
condensed reason and the original payload. A decision of any action kind becomes one row:
`action_kind` says which of the kind columns (`contracts.actions.KIND_COLUMNS`) it fills,
`_KIND_PARSERS` fills them, and the columns of other kinds stay null (so `action` and
`action_probability` are null for continuous decisions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
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
from stream._fast_parse import DECISIONS, REWARDS, fast_parse

KIND_DECISION = "decision"
KIND_REWARD = "reward"
KIND_DEAD = "dead"
_MAX_INT64 = 2**63 - 1

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
    """Classify one record: the columns of `PARSED_SCHEMA` that apply (without source position,
    payload and `ds`, which the batch parser fills column-wise).

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
        if event.sequence_number > _MAX_INT64:  # valid for the model, but no int64 column holds it
            return {
                "kind": KIND_DEAD,
                "reason": f"invalid DecisionEvent: sequence_number: must be at most {_MAX_INT64}, "
                f"got {event.sequence_number}",
            }
        return {
            "kind": KIND_DECISION,
            "request_id": event.request_id,
            "entity_id": event.entity_id,
            "mdp_id": event.mdp_id,
            "sequence_number": event.sequence_number,
            "timestamp": event.timestamp,
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


def _payloads(values: pa.Array) -> tuple[pa.Array, bool]:
    """Raw values as UTF-8 text (zero-copy when valid; undecodable bytes replaced, as dead letters
    show), and whether the text is exactly the bytes."""
    try:
        return pc.fill_null(values.cast(pa.string()), ""), True
    except pa.ArrowInvalid:
        text = [v.decode("utf-8", errors="replace") if v is not None else "" for v in values.to_pylist()]
        return pa.array(text, pa.string()), False


_COMPUTED = ("kind", "src_topic", "src_partition", "src_offset", "payload", "ds")


def make_batch_parser(
    decisions_topic: str, rewards_topic: str, reward_weights: Mapping[str, float] | None = None
) -> Callable[[pa.Table], pa.Table]:
    """Parse a table of `KAFKA_RECORD_SCHEMA` records into a `PARSED_SCHEMA` table.

    Most records are accepted column-wise (`stream._fast_parse`); the rest are validated one by one
    with pydantic (`parse_record`), so each bad record gets pydantic's own reason. Source position,
    payload and `ds` are whole-column Arrow operations."""
    per_record = [name for name in _ARROW_SCHEMA.names if name not in _COMPUTED]
    fast_kinds = ((decisions_topic, DECISIONS, KIND_DECISION), (rewards_topic, REWARDS, KIND_REWARD))

    def parse_table(records: pa.Table) -> pa.Table:
        n = records.num_rows
        topic_column = records.column("topic").combine_chunks().cast(pa.string())
        payloads, exact_text = _payloads(records.column("value").combine_chunks())
        parts: list[tuple[np.ndarray, str, dict[str, pa.Array]]] = []
        done = np.zeros(n, dtype=bool)
        for topic, fast_kind, kind in fast_kinds if exact_text else ():
            rows = np.flatnonzero(np.asarray(pc.equal(topic_column, topic).to_numpy(zero_copy_only=False)))
            if len(rows):
                columns, accepted = fast_parse(payloads.take(pa.array(rows)), fast_kind, reward_weights)
                if accepted.any():
                    parts.append((rows[accepted], kind, columns))
                    done[rows[accepted]] = True
        slow = np.flatnonzero(~done)
        topics = topic_column.take(pa.array(slow)).to_pylist()
        values = records.column("value").combine_chunks().take(pa.array(slow)).to_pylist()
        slow_columns: dict[str, list[Any]] = {name: [None] * len(slow) for name in per_record}
        slow_kinds: list[str] = [KIND_DEAD] * len(slow)
        for i in range(len(slow)):
            row = parse_record(topics[i], values[i], decisions_topic, rewards_topic, reward_weights)
            slow_kinds[i] = row.pop("kind")
            for name, value in row.items():
                slow_columns[name][i] = value
        parts.append(
            (
                slow,
                "",
                {
                    "kind": pa.array(slow_kinds, pa.string()),
                    **{
                        name: pa.array(slow_columns[name], _ARROW_SCHEMA.field(name).type)
                        for name in per_record
                    },
                },
            )
        )
        # Rows of every part back in record order.
        order = np.argsort(np.concatenate([rows for rows, _, _ in parts]), kind="stable")
        arrays: dict[str, pa.Array] = {}
        for name in ["kind", *per_record]:
            field_type = _ARROW_SCHEMA.field(name).type
            pieces = []
            for rows, kind, columns in parts:
                if name in columns:
                    piece = columns[name].cast(field_type)
                    # a cast may keep the child field's name and nullability: the layout is the same
                    pieces.append(piece if piece.type == field_type else piece.view(field_type))
                elif name == "kind":
                    pieces.append(pa.repeat(pa.scalar(kind, pa.string()), len(rows)))
                else:
                    pieces.append(pa.nulls(len(rows), field_type))
            arrays[name] = pa.concat_arrays(pieces).take(pa.array(order))
        arrays["src_topic"] = topic_column
        arrays["src_partition"] = records.column("partition").combine_chunks().cast(pa.int32())
        arrays["src_offset"] = records.column("offset").combine_chunks().cast(pa.int64())
        arrays["payload"] = payloads
        arrays["ds"] = pc.strftime(arrays["timestamp"], format="%Y-%m-%d")
        return pa.table({name: arrays[name] for name in _ARROW_SCHEMA.names}, schema=_ARROW_SCHEMA)

    return parse_table


# What the source hands Spark when it parses: one row per parsed chunk, the chunk an Arrow IPC stream
# of `PARSED_SCHEMA` rows. Spark moves a few opaque cells per task instead of converting every
# feature map and list twice (Arrow → rows in the executor, rows → Arrow for the driver).
PACKED_SCHEMA = StructType(
    [
        StructField("src_topic", StringType(), False),
        StructField("src_partition", IntegerType(), False),
        StructField("first_offset", LongType(), False),
        StructField("rows", LongType(), False),
        StructField("arrow_ipc", BinaryType(), False),
    ]
)
_ARROW_PACKED_SCHEMA = to_arrow_schema(PACKED_SCHEMA, timezone="UTC")
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")  # JSON payloads shrink ~4×: less for Spark to move


def pack_parsed(topic: str, partition: int, first_offset: int, parsed: pa.Table) -> pa.RecordBatch:
    """One `PACKED_SCHEMA` row carrying a parsed chunk."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _ARROW_SCHEMA, options=_IPC_OPTIONS) as writer:
        writer.write_table(parsed)
    return pa.RecordBatch.from_pylist(
        [
            {
                "src_topic": topic,
                "src_partition": partition,
                "first_offset": first_offset,
                "rows": parsed.num_rows,
                "arrow_ipc": sink.getvalue().to_pybytes(),
            }
        ],
        schema=_ARROW_PACKED_SCHEMA,
    )


def unpack_parsed(packed: pa.Table) -> pa.Table:
    """The `PARSED_SCHEMA` rows of a packed batch, in source position order."""
    if packed.num_rows == 0:
        return _ARROW_SCHEMA.empty_table()
    order = [("src_topic", "ascending"), ("src_partition", "ascending"), ("first_offset", "ascending")]
    blobs = packed.sort_by(order).column("arrow_ipc").combine_chunks()
    chunks = [pa.ipc.open_stream(blob.as_buffer()).read_all() for blob in blobs]
    return pa.concat_tables(chunks)
