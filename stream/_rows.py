"""The one wide row shape the timeline job passes between its steps, and the per-group logic.

Parsed events, state, timeline rows and dead letters all share `ROW_SCHEMA` (a `kind` column tells
them apart), so one batch is a few Spark jobs: two grouped Arrow passes and the writes.

- `attribute_rewards` runs per request_id: sums the rewards inside the attribution window onto the
  decision, tags the rest, and expires rewards whose decision never came.
- `close_mdps` runs per mdp_id: once the MDP has been idle long enough, emits its timeline rows
  (lead over sequence number, last step terminal) and a "closed" marker; otherwise returns it to
  state. The next-step columns of a row come from the following step: the common ones for every
  kind, plus those of its action kind (`_NEXT_STEP_COLUMNS`, empty on the terminal row). An MDP
  whose decisions mix action kinds is dead-lettered whole, each decision with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import BooleanType, LongType, StructField, StructType

from contracts.actions import (
    POSSIBLE_ACTION_FEATURES_COLUMN,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
    ActionKind,
)
from stream._parse import (
    _FEATURE_MAP,
    KIND_DEAD,
    KIND_DECISION,
    KIND_REWARD,
    PARSED_SCHEMA,
)

KIND_TIMELINE = "timeline"
KIND_CLOSED = "closed"
STATE_KINDS = (KIND_DECISION, KIND_REWARD, KIND_CLOSED)
REASON_LATE_DECISION = "late: mdp already closed"

_EXTRA = [
    ("arrival_clock_ms", LongType()),
    ("n_rewards", LongType()),
    ("closed_clock_ms", LongType()),
    ("sequence_number_ordinal", LongType()),
    ("reward_observed", BooleanType()),
    ("next_state_features", _FEATURE_MAP),
    ("next_action", PARSED_SCHEMA["action"].dataType),
    ("possible_next_actions", PARSED_SCHEMA["possible_actions"].dataType),
    (POSSIBLE_NEXT_ACTION_FEATURES_COLUMN, PARSED_SCHEMA[POSSIBLE_ACTION_FEATURES_COLUMN].dataType),
    ("time_diff", LongType()),
    ("time_since_first", LongType()),
    ("not_terminal", BooleanType()),
]
ROW_SCHEMA = StructType(
    [StructField(f.name, f.dataType, True) for f in PARSED_SCHEMA]
    + [StructField(n, t, True) for n, t in _EXTRA]
)
ARROW_ROW_SCHEMA = to_arrow_schema(ROW_SCHEMA, timezone="UTC")
_NAMES = ARROW_ROW_SCHEMA.names

# Per action kind, (row column, column of the following step) pairs beyond the common next-step ones.
_NEXT_STEP_COLUMNS: dict[ActionKind, tuple[tuple[str, str], ...]] = {
    ActionKind.DISCRETE: (),
    ActionKind.PARAMETRIC: ((POSSIBLE_NEXT_ACTION_FEATURES_COLUMN, POSSIBLE_ACTION_FEATURES_COLUMN),),
    ActionKind.CONTINUOUS: (),
}


def _action_kind(row: dict[str, Any]) -> ActionKind:
    """The decision's kind; state snapshots written before action kinds existed hold discrete ones."""
    return ActionKind(row["action_kind"]) if row["action_kind"] else ActionKind.DISCRETE


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pydict(
        {name: [r.get(name) for r in rows] for name in _NAMES}, schema=ARROW_ROW_SCHEMA
    )


def _first_seen(row: dict[str, Any]) -> tuple:
    return (
        row["arrival_clock_ms"],
        row["src_topic"] or "",
        row["src_partition"] or 0,
        row["src_offset"] or 0,
    )


def _clear(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**row, **dict.fromkeys(names)}


def by_key(
    key: str, group_fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A `mapInArrow` function applying `group_fn` to each `key` group of a partition.

    Used after `repartition(key)` instead of `groupBy(key).applyInArrow`, whose per-group overhead
    dominated (one Arrow table per group: ~150 rows/s measured with thousands of small groups).
    """

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for batch in batches:
            for row in batch.to_pylist():
                groups.setdefault(row[key], []).append(row)
        out: list[dict[str, Any]] = []
        for rows in groups.values():
            out.extend(group_fn(rows))
        yield from _table(out).to_batches(max_chunksize=10_000)

    return apply


def make_attribute_rewards(
    clock_ms: int, window_s: float, close_after_ms: int
) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per request_id group of decision and reward rows (see module docstring)."""
    window = timedelta(seconds=window_s)

    def attribute_rewards(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        decisions = sorted((r for r in rows if r["kind"] == KIND_DECISION), key=_first_seen)
        rewards = [r for r in rows if r["kind"] == KIND_REWARD]
        out: list[dict[str, Any]] = []
        if not decisions:
            for r in rewards:
                if r["arrival_clock_ms"] + close_after_ms <= clock_ms:
                    reason = (
                        f"unattributed: no decision with request_id {r['request_id']!r} arrived within "
                        f"{close_after_ms / 1000:g} s of the reward"
                    )
                    out.append({**r, "kind": KIND_DEAD, "reason": reason})
                else:
                    out.append(_clear(r, "mdp_id", "reason"))
            return out
        decision = decisions[0]
        deadline = decision["timestamp"] + window
        total, count, metrics = 0.0, 0, {}
        for r in rewards:
            if r["timestamp"] <= deadline:
                total += r["reward"]
                count += 1
                for name, value in r["metrics"] or []:
                    metrics[name] = metrics.get(name, 0.0) + value
                out.append({**r, "mdp_id": decision["mdp_id"], "reason": None})
            else:
                reason = (
                    f"late: reward at {r['timestamp'].isoformat()} is after its decision's attribution window "
                    f"({window_s:g} s after {decision['timestamp'].isoformat()})"
                )
                out.append({**r, "mdp_id": decision["mdp_id"], "reason": reason})
        for d in decisions:
            out.append({**d, "reward": total, "n_rewards": count, "metrics": list(metrics.items())})
        return out

    return attribute_rewards


def _timeline_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first_seq = steps[0]["sequence_number"]
    rows = []
    for i, step in enumerate(steps):
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        kind = _action_kind(step)
        rows.append(
            {
                **step,
                **{column: nxt[source] if nxt else [] for column, source in _NEXT_STEP_COLUMNS[kind]},
                "kind": KIND_TIMELINE,
                "action_kind": kind.value,
                "sequence_number_ordinal": i + 1,
                "reward": step["reward"] or 0.0,
                "reward_observed": (step["n_rewards"] or 0) > 0,
                "metrics": step["metrics"] or [],
                "next_state_features": nxt["state_features"] if nxt else [],
                "next_action": nxt["action"] if nxt else None,
                "possible_next_actions": nxt["possible_actions"] if nxt else [],
                "time_diff": nxt["sequence_number"] - step["sequence_number"] if nxt else 0,
                "time_since_first": step["sequence_number"] - first_seq,
                "not_terminal": nxt is not None,
            }
        )
    return rows


def make_close_mdps(
    clock_ms: int, close_after_ms: int, max_mdp_length: int | None
) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per mdp_id group of attributed decision and reward rows (see module docstring)."""

    def close_mdps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        unique: dict[int, dict[str, Any]] = {}
        for d in sorted((r for r in rows if r["kind"] == KIND_DECISION), key=_first_seen):
            unique.setdefault(d["sequence_number"], d)  # duplicates collapse to the first seen
        rewards = [r for r in rows if r["kind"] == KIND_REWARD]
        last_arrival = max(d["arrival_clock_ms"] for d in unique.values())
        if last_arrival + close_after_ms > clock_ms:
            kept = [_clear(d, "reward", "n_rewards", "metrics") for d in unique.values()]
            return kept + [_clear(r, "reason") for r in rewards]
        steps = sorted(unique.values(), key=lambda d: d["sequence_number"])
        out = [{**r, "kind": KIND_DEAD} for r in rewards if r["reason"]]
        mdp_id = steps[0]["mdp_id"]
        out.append({"kind": KIND_CLOSED, "mdp_id": mdp_id, "closed_clock_ms": clock_ms})
        kinds = sorted({_action_kind(step).value for step in steps})
        if len(kinds) > 1:
            reason = (
                f"mixed action kinds: mdp {mdp_id!r} has {' and '.join(kinds)} decisions; "
                "log every decision of one MDP with the same action_kind"
            )
            out.extend({**step, "kind": KIND_DEAD, "reason": reason} for step in steps)
        elif max_mdp_length is None or len(steps) <= max_mdp_length:
            out.extend(_timeline_rows(steps))
        return out

    return close_mdps
