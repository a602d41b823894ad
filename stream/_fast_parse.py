"""The column-wise fast path of event validation: most records of a chunk accepted without pydantic.

`fast_parse(payloads, kind, reward_weights)` parses a chunk of one topic's payloads with Arrow's
JSON reader and checks the parsed columns with vectorized rules that are the `contracts.events`
models' rules for the shapes it accepts: discrete decisions (schema version 1 or 2) and rewards.
It returns the `PARSED_SCHEMA` columns of the records it accepts and a mask of them; every other
record (malformed, another action kind, or merely unusual: escapes, control characters, very long
integers, timestamps not in `YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)` form) goes to the pydantic
path in `stream._parse`, so each dead letter keeps pydantic's exact reason. The fast path only
ever sends a record to pydantic; it never rejects one itself.

What Arrow's reader cannot tell apart is handled by sending records to pydantic:
- a key absent or `null`: the same for optional keys (both None), never accepted for required
  ones, and screened out of the payload for keys whose default is not None (`schema_version`,
  `action_kind`, `metrics`: `"metrics": null` is invalid, a missing `metrics` is `{}`);
- a null metric (invalid) and an absent one: rewards with any `null` but their `reward`'s go to
  pydantic; an absent and a null context feature both mean missing;
- a key unknown to the model: every record of the block goes to pydantic (extra keys are forbidden,
  and `"extra": null` reads like an absent key);
- a record that breaks a whole block (invalid JSON, a type that changes between records, a
  duplicate key): the block is split in halves until the record is alone, and it goes to pydantic.

Feature and metric maps list their keys in the block's first-seen order, which may differ from a
record's own key order (maps compare equal either way).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from contracts.actions import ActionKind

DECISIONS = "decision"
REWARDS = "reward"

_MAX_STR = 512  # `contracts.events.NonEmptyStr`
_BLOCK_ROWS = 4096

# Payloads the fast path leaves to pydantic without parsing them.
_UNUSUAL = "|".join(
    [
        r"^[^{]",  # not an object, or leading whitespace / BOM
        r"[^}]$",  # truncated, or trailing whitespace
        r"[\x00-\x1f\\]",  # control characters (raw newlines split Arrow's lines) and escapes
        r"NaN|Infinity",  # non-finite literals Arrow would read as numbers
        r"[^.\d]\d{16,}[^.\deE]",  # integers that may not fit in int64
        r'"(schema_version|action_kind|metrics)"\s*:\s*null',  # null ≠ absent for these keys
    ]
)
_REWARD_NULL = r'"reward"\s*:\s*null'
_TIMESTAMP = (
    r"^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)

_STRING_FIELDS = {
    DECISIONS: ("request_id", "entity_id", "mdp_id", "model_version", "action", "action_kind", "timestamp"),
    REWARDS: ("request_id", "timestamp"),
}
_FIELDS = {
    DECISIONS: {
        "schema_version",
        "action_kind",
        "request_id",
        "entity_id",
        "mdp_id",
        "sequence_number",
        "timestamp",
        "context_features",
        "possible_actions",
        "action",
        "action_probability",
        "candidate_features",
        "action_vector",
        "action_log_density",
        "model_version",
    },
    REWARDS: {"schema_version", "request_id", "timestamp", "reward", "metrics"},
}
_FEATURE_MAP = pa.map_(pa.string(), pa.field("value", pa.float64(), nullable=False))
_NAMES = pa.list_(pa.field("element", pa.string(), nullable=False))
_TYPES = {
    "request_id": pa.string(),
    "entity_id": pa.string(),
    "mdp_id": pa.string(),
    "sequence_number": pa.int64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "state_features": _FEATURE_MAP,
    "possible_actions": _NAMES,
    "action_kind": pa.string(),
    "action": pa.string(),
    "action_probability": pa.float64(),
    "model_version": pa.string(),
    "reward": pa.float64(),
    "metrics": _FEATURE_MAP,
}


def _read_blocks(text: pa.Buffer, ends: np.ndarray, kind: str) -> list[tuple[int, pa.Table | None]]:
    """(first index, table) per block of payloads; a record that breaks its block ends up alone with
    table None."""
    options = pj.ParseOptions(
        explicit_schema=pa.schema([(name, pa.string()) for name in _STRING_FIELDS[kind]]),
        unexpected_field_behavior="infer",
    )

    def read(start: int, stop: int) -> list[tuple[int, pa.Table | None]]:
        try:
            block = text.slice(int(ends[start]), int(ends[stop] - ends[start]))
            table = pj.read_json(pa.BufferReader(block), parse_options=options)
            if table.num_rows == stop - start:
                return [(start, table)]
        except (pa.ArrowInvalid, UnicodeDecodeError):
            pass
        if stop - start == 1:
            return [(start, None)]
        middle = (start + stop) // 2
        return read(start, middle) + read(middle, stop)

    blocks = []
    for start in range(0, len(ends) - 1, _BLOCK_ROWS):
        blocks.extend(read(start, min(start + _BLOCK_ROWS, len(ends) - 1)))
    return blocks


def _valid(array: pa.Array) -> np.ndarray:
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows)
    return table.column(name).combine_chunks()


def _numbers(array: pa.Array, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """A numeric column as float64 (JSON ints become floats, as pydantic makes them); rows holding a
    non-number are marked not ok."""
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        return array.cast(pa.float64(), safe=False), ok  # ints round as Python's float(int) does
    return pa.nulls(len(array), pa.float64()), ok & ~_valid(array)


def _strings(array: pa.Array, ok: np.ndarray, *, required: bool) -> np.ndarray:
    """Rows whose value is a string of 1..512 characters (or absent, when not required)."""
    if not pa.types.is_string(array.type):
        return ok & ~_valid(array) if not required else np.zeros_like(ok)
    present = _valid(array)
    length = np.asarray(pc.fill_null(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False))
    fits = present & (length >= 1) & (length <= _MAX_STR)
    return ok & (fits if required else (fits | ~present))


def _timestamps(array: pa.Array, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    if not pa.types.is_string(array.type):
        return pa.nulls(len(array), pa.timestamp("us", tz="UTC")), np.zeros_like(ok)
    ok = ok & np.asarray(pc.fill_null(pc.match_substring_regex(array, _TIMESTAMP), False), dtype=bool)
    text = pc.if_else(pa.array(ok), array, pa.scalar(None, pa.string()))
    try:
        return text.cast(pa.timestamp("us", tz="UTC")), ok
    except pa.ArrowInvalid:  # an impossible date (Feb 30): let pydantic name it
        return pa.nulls(len(array), pa.timestamp("us", tz="UTC")), np.zeros_like(ok)


def _feature_map(struct: pa.Array, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """A JSON object of numbers (an Arrow struct) as `map<string, double>`; a null child is left out
    (a context feature: null or absent both mean missing; a metric: `fast_parse` screened out
    rewards with null metrics, so a null child is a metric the record does not have)."""
    n = len(struct)
    names, values, present = [], [], []
    if not pa.types.is_struct(struct.type):
        ok = ok & ~_valid(struct)
    for i in range(struct.type.num_fields if pa.types.is_struct(struct.type) else 0):
        child = struct.field(i)
        names.append(struct.type.field(i).name)
        if pa.types.is_null(child.type):
            values.append(np.zeros(n))
            present.append(np.zeros(n, dtype=bool))
            continue
        numbers, ok = _numbers(child, ok)
        values.append(np.asarray(pc.fill_null(numbers, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64))
        present.append(_valid(child))
    if not names:
        matrix, mask = np.zeros((n, 0)), np.zeros((n, 0), dtype=bool)
    else:
        matrix, mask = np.stack(values, axis=1), np.stack(present, axis=1)
    mask &= ok[:, None]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    keys = pa.array(np.broadcast_to(np.array(names, dtype=object), mask.shape)[mask], pa.string())
    items = pa.array(matrix[mask], pa.float64())
    maps = pa.MapArray.from_arrays(pa.array(offsets), keys, items, type=_FEATURE_MAP)
    return maps, ok


def _codes(strings: pa.Array) -> np.ndarray:
    encoded = pc.dictionary_encode(strings)
    return np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _possible_actions(lists: pa.Array, action: pa.Array, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """`possible_actions`: non-empty, distinct strings of 1..512 characters, holding `action`."""
    n = len(lists)
    if not (pa.types.is_list(lists.type) and pa.types.is_string(lists.type.value_type)):
        return pa.nulls(n, _NAMES), np.zeros_like(ok)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False))
    ok = ok & _valid(lists) & (lengths >= 1)
    values = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    size = np.asarray(pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False))
    bad_item = ~_valid(values) | (size < 1) | (size > _MAX_STR)
    both = pa.chunked_array([values, action.cast(pa.string())]).combine_chunks()
    codes = _codes(both)
    item_codes, action_codes = codes[: len(values)], codes[len(values) :]
    order = np.lexsort((item_codes, parents))
    repeated = np.zeros(len(values), dtype=bool)
    if len(values) > 1:
        same = (parents[order][1:] == parents[order][:-1]) & (item_codes[order][1:] == item_codes[order][:-1])
        repeated[order[1:]] = same
    bad_rows = np.zeros(n, dtype=bool)
    np.logical_or.at(bad_rows, parents, bad_item | repeated)
    width = int(codes.max()) + 2 if len(codes) else 1
    member = np.isin(np.arange(n) * width + action_codes, parents * width + item_codes)
    ok = ok & ~bad_rows & member & (action_codes >= 0)
    return lists, ok


def _schema_version(table: pa.Table, ok: np.ndarray, allowed: tuple[int, ...]) -> np.ndarray:
    version = _column(table, "schema_version")
    present = _valid(version)
    if not pa.types.is_integer(version.type):
        return ok & ~present
    values = np.asarray(pc.fill_null(version, allowed[-1]).to_numpy(zero_copy_only=False))
    return ok & np.isin(values, allowed)


def _decisions(table: pa.Table) -> tuple[dict[str, pa.Array], np.ndarray]:
    n = table.num_rows
    ok = _schema_version(table, np.ones(n, dtype=bool), (1, 2))
    kind = _column(table, "action_kind")
    if pa.types.is_string(kind.type):
        ok &= np.asarray(pc.fill_null(pc.equal(kind, ActionKind.DISCRETE.value), True), dtype=bool)
    else:
        ok &= ~_valid(kind)
    for name in ("candidate_features", "action_vector", "action_log_density"):  # not for discrete ones
        ok &= ~_valid(_column(table, name))
    for name in ("request_id", "entity_id", "mdp_id", "model_version", "action"):
        ok = _strings(_column(table, name), ok, required=True)
    sequence = _column(table, "sequence_number")
    if pa.types.is_integer(sequence.type):
        ok &= np.asarray(pc.fill_null(pc.greater_equal(sequence, 0), False), dtype=bool)
        sequence = sequence.cast(pa.int64())
    else:
        ok &= np.zeros(n, dtype=bool)
        sequence = pa.nulls(n, pa.int64())
    stamps, ok = _timestamps(_column(table, "timestamp"), ok)
    features, ok = _feature_map(_column(table, "context_features"), ok)
    ok &= _valid(_column(table, "context_features"))
    probability, ok = _numbers(_column(table, "action_probability"), ok)
    p = np.asarray(pc.fill_null(probability, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    ok &= (p > 0.0) & (p <= 1.0)
    possible, ok = _possible_actions(_column(table, "possible_actions"), _column(table, "action"), ok)
    columns = {
        "request_id": _column(table, "request_id"),
        "entity_id": _column(table, "entity_id"),
        "mdp_id": _column(table, "mdp_id"),
        "sequence_number": sequence,
        "timestamp": stamps,
        "state_features": features,
        "possible_actions": possible,
        "action_kind": pa.repeat(pa.scalar(ActionKind.DISCRETE.value), n),
        "action": _column(table, "action"),
        "action_probability": probability,
        "model_version": _column(table, "model_version"),
    }
    return columns, ok


def _rewards(table: pa.Table, weights: Mapping[str, float] | None) -> tuple[dict[str, pa.Array], np.ndarray]:
    n = table.num_rows
    ok = _schema_version(table, np.ones(n, dtype=bool), (1,))
    ok = _strings(_column(table, "request_id"), ok, required=True)
    stamps, ok = _timestamps(_column(table, "timestamp"), ok)
    reward, ok = _numbers(_column(table, "reward"), ok)
    metrics_struct = _column(table, "metrics")
    metrics, ok = _feature_map(metrics_struct, ok)
    n_metrics = np.diff(np.asarray(metrics.offsets))
    if weights:  # `contracts.reward_value`: Σ weight × metric, in the weights' order, absent = 0
        total = np.zeros(n)
        for name, weight in weights.items():
            if pa.types.is_struct(metrics_struct.type) and metrics_struct.type.get_field_index(name) >= 0:
                values, ok = _numbers(metrics_struct.field(name), ok)
                values = np.asarray(pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False), np.float64)
            else:
                values = np.zeros(n)
            total = total + weight * values
        value = pa.array(total, pa.float64())
        ok &= _valid(reward) | (n_metrics > 0)  # `RewardEvent._carries_something`
    else:
        value = reward
        ok &= _valid(reward)  # no reward and no weights: pydantic's path names the dead letter
    columns = {
        "request_id": _column(table, "request_id"),
        "timestamp": stamps,
        "reward": value,
        "metrics": metrics,
    }
    return columns, ok


def _typed(array: pa.Array, to: pa.DataType) -> pa.Array:
    cast = array.cast(to)
    return cast if cast.type == to else cast.view(to)  # a cast may keep a child field's name


def fast_parse(
    payloads: pa.Array, kind: str, reward_weights: Mapping[str, float] | None = None
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The columns of the records accepted column-wise (in record order), and the mask of them.

    `payloads`: the chunk's values as UTF-8 strings; `kind`: `DECISIONS` or `REWARDS`."""
    n = len(payloads)
    usual = ~np.asarray(pc.fill_null(pc.match_substring_regex(payloads, _UNUSUAL), True), dtype=bool)
    if kind == REWARDS:  # no null but the reward's own: a metric missing from the object is absent
        nulls = pc.count_substring(payloads, "null")
        usual &= np.asarray(pc.equal(nulls, pc.count_substring_regex(payloads, _REWARD_NULL)), dtype=bool)
    usual &= np.asarray(pc.fill_null(pc.binary_length(payloads), 0).to_numpy(zero_copy_only=False)) > 0
    index = np.flatnonzero(usual)
    if not len(index):
        return {}, np.zeros(n, dtype=bool)
    # One buffer of the usual payloads, one per line; block i is bytes [ends[start], ends[stop]).
    lines = pc.binary_join_element_wise(payloads.filter(pa.array(usual)), "", "\n")
    ends = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    text = lines.buffers()[2]
    accepted_at: list[np.ndarray] = []
    parts: list[dict[str, pa.Array]] = []
    for start, table in _read_blocks(text, ends, kind):
        if table is None or set(table.column_names) - _FIELDS[kind]:
            continue
        columns, ok = _decisions(table) if kind == DECISIONS else _rewards(table, reward_weights)
        if not ok.any():
            continue
        keep = pa.array(ok)
        accepted_at.append(index[start : start + table.num_rows][ok])
        parts.append({name: _typed(array.filter(keep), _TYPES[name]) for name, array in columns.items()})
    accepted = np.zeros(n, dtype=bool)
    if not parts:
        return {}, accepted
    accepted[np.concatenate(accepted_at)] = True
    merged = {name: pa.concat_arrays([part[name] for part in parts]) for name in parts[0]}
    return merged, accepted
