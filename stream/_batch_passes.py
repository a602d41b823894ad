"""The keyed passes of one timeline batch, vectorized over Arrow tables (no per-row Python).

`advance_timelines(state, new, clock_ms, rules)` takes the state left by batch N-1 and the rows
parsed in batch N (both `ARROW_ROW_SCHEMA`) and returns N's timeline rows, dead letters and state:

1. decisions for an MDP closed earlier (and still remembered) are dead-lettered as late;
2. attribution per request_id: the first-seen decision of a request id owns its rewards; rewards
   with timestamp ≤ decision time + window are summed (reward, count, metrics per name) onto every
   decision of that request id, later ones are tagged late; rewards whose decision has not come
   within `close_after_ms` of their arrival are dead-lettered as unattributed;
3. closing per mdp_id: duplicates of (mdp_id, sequence_number) collapse to the first seen; an MDP
   whose last decision arrived ≥ `close_after_ms` before the clock is closed: its late rewards are
   dead-lettered, a "closed" marker remembers its id, and its steps become timeline rows (lead over
   sequence number, the last step terminal) unless it mixes action kinds (each step dead-lettered)
   or is longer than `max_mdp_length` (dropped as an outlier). Open MDPs go back to state.

"First seen" orders rows by (arrival clock, source topic, partition, offset), so a replay of a batch
gives the same answer. Keys become integer codes (`_codes`) and every grouping is a numpy sort;
the wide columns (feature maps, lists) are only ever moved with `take`. Messages of dead letters
are formatted per row, but only for the (rare) rows that are dead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.actions import (
    POSSIBLE_ACTION_FEATURES_COLUMN,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
    ActionKind,
)
from stream._layout import TIMELINE_COLUMNS
from stream._parse import KIND_DEAD, KIND_DECISION, KIND_REWARD
from stream._rows import ARROW_ROW_SCHEMA, KIND_CLOSED, REASON_LATE_DECISION

DEAD_LETTER_COLUMNS = ["src_topic", "src_partition", "src_offset", "payload", "reason"]
_DISCRETE = ActionKind.DISCRETE.value
_PARAMETRIC = ActionKind.PARAMETRIC.value


@dataclass(frozen=True, slots=True)
class BatchRules:
    """The timing and filtering rules of `StreamConfig`, in milliseconds."""

    attribution_window_ms: int
    close_after_ms: int
    closed_retention_ms: int
    max_closed_mdps: int | None = None
    max_mdp_length: int | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one batch produces: timeline rows (`TIMELINE_COLUMNS`), dead letters
    (`DEAD_LETTER_COLUMNS`, ordered by source position) and the state for the next batch."""

    timelines: pa.Table
    dead_letters: pa.Table
    state: pa.Table


# -- small Arrow/numpy helpers --------------------------------------------------------------------
def _col(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _ints(table: pa.Table, name: str, fill: int = 0) -> np.ndarray:
    column = pc.fill_null(_col(table, name), fill) if table.num_rows else _col(table, name)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(_col(table, name), 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)


def _micros(table: pa.Table, name: str) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (nulls 0)."""
    column = _col(table, name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _codes(*arrays: pa.Array) -> tuple[list[np.ndarray], int]:
    """Integer codes of string arrays over one shared dictionary (null → -1), and its size."""
    sizes = [len(a) for a in arrays]
    if sum(sizes) == 0:
        return [np.zeros(0, np.int64) for _ in arrays], 0
    encoded = pc.dictionary_encode(pa.concat_arrays([a.cast(pa.string()) for a in arrays]))
    codes = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.split(codes, np.cumsum(sizes)[:-1]), len(encoded.dictionary)


def _ranked_codes(array: pa.Array) -> np.ndarray:
    """Codes that sort like the strings themselves (few distinct values: topic names)."""
    if len(array) == 0:
        return np.zeros(0, np.int64)
    encoded = pc.dictionary_encode(pc.fill_null(array.cast(pa.string()), ""))
    rank = np.asarray(pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first"), np.int64) - 1
    return rank[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first position of each run of equal keys."""
    starts = np.ones(len(sorted_keys), dtype=bool)
    if len(sorted_keys) > 1:
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return starts


def _first_seen_order(table: pa.Table, rows: np.ndarray, *group_keys: np.ndarray) -> np.ndarray:
    """`rows` sorted by the group keys, then first-seen order within each group."""
    arrival = _ints(table, "arrival_clock_ms")[rows]
    topic = _ranked_codes(_col(table, "src_topic"))[rows]
    partition = _ints(table, "src_partition")[rows]
    offset = _ints(table, "src_offset")[rows]
    order = np.lexsort((offset, partition, topic, arrival, *reversed([k[rows] for k in group_keys])))
    return rows[order]


def _with(table: pa.Table, **columns: pa.Array | object) -> pa.Table:
    """`table` with some columns replaced by arrays or by one repeated value (None: nulls)."""
    for name, value in columns.items():
        data_type = ARROW_ROW_SCHEMA.field(name).type
        if isinstance(value, pa.Array | pa.ChunkedArray):
            array = value.cast(data_type) if value.type != data_type else value
        elif value is None:
            array = pa.nulls(table.num_rows, data_type)
        else:
            array = pa.repeat(pa.scalar(value, data_type), table.num_rows)
        table = table.set_column(table.schema.get_field_index(name), name, array)
    return table


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    return table.take(pa.array(rows, pa.int64()))


def _empty() -> pa.Table:
    return ARROW_ROW_SCHEMA.empty_table()


def _markers(mdp_ids: pa.Array, clock_ms: int) -> pa.Table:
    n = len(mdp_ids)
    columns = {f.name: pa.nulls(n, f.type) for f in ARROW_ROW_SCHEMA}
    columns["kind"] = pa.repeat(pa.scalar(KIND_CLOSED), n)
    columns["mdp_id"] = mdp_ids.cast(pa.string())
    columns["closed_clock_ms"] = pa.repeat(pa.scalar(clock_ms, pa.int64()), n)
    return pa.table(columns, schema=ARROW_ROW_SCHEMA)


# -- the passes -------------------------------------------------------------------------------------
def _remembered_closed(state: pa.Table, clock_ms: int, rules: BatchRules) -> pa.Table:
    closed = state.filter(pc.equal(state["kind"], KIND_CLOSED))
    closed = closed.filter(pc.greater(pc.add(closed["closed_clock_ms"], rules.closed_retention_ms), clock_ms))
    if rules.max_closed_mdps is not None and closed.num_rows > rules.max_closed_mdps:
        closed = closed.sort_by([("closed_clock_ms", "descending")]).slice(0, rules.max_closed_mdps)
    return closed


def _summed_metrics(rewards: pa.Table, group: np.ndarray, n_groups: int) -> pa.Array:
    """Per group, the sum of each metric over the rewards (map<string, double>, keys sorted)."""
    metrics = _col(rewards, "metrics")
    if len(metrics) == 0:
        offsets = np.zeros(n_groups + 1, np.int32)
        return pa.MapArray.from_arrays(
            pa.array(offsets), pa.array([], pa.string()), pa.array([], pa.float64())
        )
    offsets = np.asarray(metrics.offsets.to_numpy(), dtype=np.int64)  # into the unsliced children
    valid = np.asarray(metrics.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    entry_owner = np.repeat(np.arange(len(metrics)), np.diff(offsets))
    kept = np.flatnonzero(valid[entry_owner]) + offsets[0]  # entries of non-null maps
    keys = metrics.keys.take(pa.array(kept, pa.int64()))
    values = np.asarray(metrics.items.to_numpy(zero_copy_only=False), dtype=np.float64)[kept]
    owner = group[entry_owner[kept - offsets[0]]]
    encoded = pc.dictionary_encode(keys)
    n_keys = max(len(encoded.dictionary), 1)
    key_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    # Sort entries by (group, key name) so each group's map lists its metrics in name order.
    key_rank = (
        np.asarray(pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first"), np.int64) - 1
    )
    combined = owner * n_keys + (key_rank[key_codes] if len(key_codes) else key_codes)
    unique, inverse = np.unique(combined, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    owners = unique // n_keys
    by_rank = np.argsort(key_rank) if len(key_rank) else key_rank
    names = encoded.dictionary.take(pa.array(by_rank[unique % n_keys], pa.int64())) if len(unique) else keys
    offsets = np.zeros(n_groups + 1, np.int64)
    np.add.at(offsets, owners + 1, 1)
    return pa.MapArray.from_arrays(pa.array(np.cumsum(offsets), pa.int32()), names, pa.array(sums))


def _attribute(events: pa.Table, clock_ms: int, rules: BatchRules) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Decisions with their rewards summed, rewards tagged with their MDP, and dead rewards."""
    kind = np.asarray(_col(events, "kind").to_numpy(zero_copy_only=False))
    dec_rows = np.flatnonzero(kind == KIND_DECISION)
    rew_rows = np.flatnonzero(kind == KIND_REWARD)
    (request,), n_requests = _codes(_col(events, "request_id"))
    ordered = _first_seen_order(events, dec_rows, request)
    owner = np.full(n_requests, -1, np.int64)  # per request code: row of its first-seen decision
    firsts = ordered[_group_starts(request[ordered])]
    owner[request[firsts]] = firsts

    rew_owner = owner[request[rew_rows]] if len(rew_rows) else np.zeros(0, np.int64)
    micros = _micros(events, "timestamp")
    arrival = _ints(events, "arrival_clock_ms")
    has_decision = rew_owner >= 0
    deadline = micros[np.where(has_decision, rew_owner, 0)] + rules.attribution_window_ms * 1000
    in_window = has_decision & (micros[rew_rows] <= deadline)
    expired = ~has_decision & (arrival[rew_rows] + rules.close_after_ms <= clock_ms)

    # Decisions: sums over the in-window rewards of their request id.
    counted = rew_rows[in_window]
    total = np.bincount(request[counted], weights=_floats(events, "reward")[counted], minlength=n_requests)
    count = np.bincount(request[counted], minlength=n_requests)
    metrics = _summed_metrics(_take(events, counted), request[counted], n_requests)
    dec_codes = pa.array(request[dec_rows], pa.int64())
    decisions = _with(
        _take(events, dec_rows),
        reward=pa.array(total[request[dec_rows]]),
        n_rewards=pa.array(count[request[dec_rows]]),
        metrics=metrics.take(dec_codes),
    )

    # Rewards with a decision: its mdp_id, and a reason when outside the window.
    matched_rows = rew_rows[has_decision]
    matched = _take(events, matched_rows)
    mdp_of_owner = _col(events, "mdp_id").take(pa.array(rew_owner[has_decision], pa.int64()))
    late = ~in_window[has_decision]
    reasons: list[str | None] = [None] * len(matched_rows)
    if late.any():
        window_s = rules.attribution_window_ms / 1000
        stamps = _col(matched, "timestamp").to_pylist()
        owner_stamps = (
            _col(events, "timestamp").take(pa.array(rew_owner[has_decision], pa.int64())).to_pylist()
        )
        for i in np.flatnonzero(late):
            reasons[i] = (
                f"late: reward at {stamps[i].isoformat()} is after its decision's attribution window "
                f"({window_s:g} s after {owner_stamps[i].isoformat()})"
            )
    matched = _with(matched, mdp_id=mdp_of_owner, reason=pa.array(reasons, pa.string()))

    # Rewards without a decision: wait, or expire as unattributed.
    waiting = _with(_take(events, rew_rows[~has_decision & ~expired]), mdp_id=None, reason=None)
    dead = _take(events, rew_rows[expired])
    if dead.num_rows:
        close_s = rules.close_after_ms / 1000
        dead = _with(
            dead,
            kind=KIND_DEAD,
            reason=pa.array(
                [
                    f"unattributed: no decision with request_id {rid!r} arrived within {close_s:g} s of the reward"
                    for rid in _col(dead, "request_id").to_pylist()
                ],
                pa.string(),
            ),
        )
    return decisions, matched, pa.concat_tables([waiting, dead])


def _next_step_indices(mdp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For steps sorted by (mdp, sequence): index of the next step (-1 on the last) and the ordinal."""
    n = len(mdp)
    starts = _group_starts(mdp)
    last = np.ones(n, dtype=bool)
    if n > 1:
        last[:-1] = starts[1:]
    nxt = np.where(last, -1, np.arange(n) + 1)
    first_index = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return nxt, np.arange(n) - first_index + 1


def _timeline_rows(steps: pa.Table) -> pa.Table:
    """Timeline rows of closed MDPs whose steps are sorted by (mdp_id, sequence_number)."""
    n = steps.num_rows
    (mdp,), _ = _codes(_col(steps, "mdp_id"))
    nxt, ordinal = _next_step_indices(mdp)
    seq = _ints(steps, "sequence_number")
    first_index = np.arange(n) - ordinal + 1
    terminal = nxt < 0
    kinds = pc.fill_null(_col(steps, "action_kind"), _DISCRETE)
    # The next step's values, from one appended row holding the terminal row's values.
    sentinel = np.where(terminal, n, nxt)
    is_parametric = np.asarray(pc.equal(kinds, _PARAMETRIC).to_numpy(zero_copy_only=False), dtype=bool)

    def following(name: str, terminal_value: object, *, parametric_only: bool = False) -> pa.Array:
        column = _col(steps, name)
        padded = pa.concat_arrays([column, pa.array([terminal_value], column.type)])
        index = pa.array(sentinel, pa.int64())
        if parametric_only:
            index = pa.array(np.where(is_parametric, sentinel, 0), pa.int64(), mask=~is_parametric)
        return padded.take(index)

    n_rewards = _ints(steps, "n_rewards")
    metrics = _col(steps, "metrics")
    columns = {
        "sequence_number_ordinal": pa.array(ordinal, pa.int64()),
        "reward": pa.array(_floats(steps, "reward")),
        "reward_observed": pa.array(n_rewards > 0),
        "metrics": metrics,  # every decision got its (maybe empty) sums in `_attribute`
        "next_state_features": following("state_features", []),
        "next_action": following("action", None),
        "possible_next_actions": following("possible_actions", []),
        POSSIBLE_NEXT_ACTION_FEATURES_COLUMN: following(
            POSSIBLE_ACTION_FEATURES_COLUMN, [], parametric_only=True
        ),
        "time_diff": pa.array(np.where(terminal, 0, seq[np.where(terminal, 0, nxt)] - seq), pa.int64()),
        "time_since_first": pa.array(seq - seq[first_index], pa.int64()),
        "not_terminal": pa.array(~terminal),
        "action_kind": kinds,
    }
    out = {name: columns[name] if name in columns else _col(steps, name) for name in TIMELINE_COLUMNS}
    return pa.table(out)


def _close(
    decisions: pa.Table, rewards: pa.Table, clock_ms: int, rules: BatchRules
) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """(timeline rows, dead rows, closed markers, state rows) of the MDPs touched by this batch."""
    (dec_mdp, rew_mdp), n_mdps = _codes(_col(decisions, "mdp_id"), _col(rewards, "mdp_id"))
    seq = _ints(decisions, "sequence_number")
    all_rows = np.arange(decisions.num_rows)
    # Unique steps: per (mdp, sequence), the first seen.
    ordered = _first_seen_order(decisions, all_rows, dec_mdp, seq)
    step_key_mdp, step_key_seq = dec_mdp[ordered], seq[ordered]
    starts = _group_starts(step_key_mdp) | _group_starts(step_key_seq)
    steps_rows = ordered[starts]  # sorted by (mdp, sequence)
    steps_mdp = dec_mdp[steps_rows]
    arrival = _ints(decisions, "arrival_clock_ms")
    last_arrival = np.full(max(n_mdps, 1), np.iinfo(np.int64).min)
    np.maximum.at(last_arrival, steps_mdp, arrival[steps_rows])
    closing = last_arrival + rules.close_after_ms <= clock_ms  # per mdp code

    # Open MDPs: their unique steps (sums cleared) and their rewards (reason cleared) stay in state.
    open_steps = _with(
        _take(decisions, steps_rows[~closing[steps_mdp]]), reward=None, n_rewards=None, metrics=None
    )
    rew_closing = closing[rew_mdp] if len(rew_mdp) else np.zeros(0, bool)
    open_rewards = _with(rewards.filter(pa.array(~rew_closing)), reason=None)
    state = pa.concat_tables([open_steps, open_rewards])

    # Closed MDPs: late rewards dead, a marker each, and their steps as timeline rows.
    closing_rewards = rewards.filter(pa.array(rew_closing))
    late_rewards = closing_rewards.filter(pc.is_valid(closing_rewards["reason"]))
    dead = [_with(late_rewards, kind=KIND_DEAD)]
    closed_steps_rows = steps_rows[closing[steps_mdp]]
    closed_mdp = dec_mdp[closed_steps_rows]
    starts = _group_starts(closed_mdp)
    markers = _markers(
        _col(decisions, "mdp_id").take(pa.array(closed_steps_rows[starts], pa.int64())), clock_ms
    )

    kinds = pc.fill_null(_col(decisions, "action_kind"), _DISCRETE)
    (kind_code,), _ = _codes(kinds)
    lowest = np.full(max(n_mdps, 1), np.iinfo(np.int64).max)
    highest = np.full(max(n_mdps, 1), -1)
    np.minimum.at(lowest, closed_mdp, kind_code[closed_steps_rows])
    np.maximum.at(highest, closed_mdp, kind_code[closed_steps_rows])
    mixed = (lowest != highest)[closed_mdp]
    length = np.bincount(closed_mdp, minlength=max(n_mdps, 1))[closed_mdp]
    emitted = ~mixed
    if rules.max_mdp_length is not None:
        emitted &= length <= rules.max_mdp_length

    if mixed.any():
        mixed_steps = _take(decisions, closed_steps_rows[mixed])
        step_kinds = pc.fill_null(_col(mixed_steps, "action_kind"), _DISCRETE).to_pylist()
        mdp_ids = _col(mixed_steps, "mdp_id").to_pylist()
        kinds_of: dict[str, set[str]] = {}
        for mdp_id, kind in zip(mdp_ids, step_kinds, strict=True):
            kinds_of.setdefault(mdp_id, set()).add(kind)
        reasons = [
            f"mixed action kinds: mdp {mdp_id!r} has {' and '.join(sorted(kinds_of[mdp_id]))} decisions; "
            "log every decision of one MDP with the same action_kind"
            for mdp_id in mdp_ids
        ]
        dead.append(_with(mixed_steps, kind=KIND_DEAD, reason=pa.array(reasons, pa.string())))
    timelines = _timeline_rows(_take(decisions, closed_steps_rows[emitted]))
    return timelines, pa.concat_tables(dead), markers, state


def advance_timelines(state: pa.Table, new: pa.Table, clock_ms: int, rules: BatchRules) -> BatchOutcome:
    """One batch of the timeline job (see the module docstring); inputs in `ARROW_ROW_SCHEMA`."""
    state = state.select(ARROW_ROW_SCHEMA.names).cast(ARROW_ROW_SCHEMA)
    new = new.select(ARROW_ROW_SCHEMA.names).cast(ARROW_ROW_SCHEMA)
    closed = _remembered_closed(state, clock_ms, rules)
    new_kind = new["kind"]
    new_decisions = new.filter(pc.equal(new_kind, KIND_DECISION))
    is_late = pc.is_in(new_decisions["mdp_id"], value_set=_col(closed, "mdp_id"))
    late = _with(new_decisions.filter(is_late), kind=KIND_DEAD, reason=REASON_LATE_DECISION)
    events = pa.concat_tables(
        [
            state.filter(pc.is_in(state["kind"], value_set=pa.array([KIND_DECISION, KIND_REWARD]))),
            new_decisions.filter(pc.invert(is_late)),
            new.filter(pc.equal(new_kind, KIND_REWARD)),
        ]
    )
    decisions, rewards, unmatched = _attribute(events, clock_ms, rules)
    timelines, closed_dead, markers, open_rows = _close(decisions, rewards, clock_ms, rules)
    dead = pa.concat_tables(
        [
            new.filter(pc.equal(new_kind, KIND_DEAD)),
            late,
            unmatched.filter(pc.equal(unmatched["kind"], KIND_DEAD)),
            closed_dead,
        ]
    )
    dead_letters = dead.select(DEAD_LETTER_COLUMNS).sort_by(
        [("src_topic", "ascending"), ("src_partition", "ascending"), ("src_offset", "ascending")]
    )
    waiting = unmatched.filter(pc.equal(unmatched["kind"], KIND_REWARD))
    next_state = pa.concat_tables([open_rows, waiting, markers, closed]).combine_chunks()
    return BatchOutcome(timelines=timelines, dead_letters=dead_letters, state=next_state)


def empty_state() -> pa.Table:
    """The state before the first batch."""
    return _empty()
