"""Timeline parquet → training tensors in batches, so a run never holds the timelines themselves.

`stream.load_timelines` reads every column of every row into pandas (dicts per row): fine for a
nightly refresh, not for ten million rows. Here the files are read twice, batch by batch:

1. the narrow columns (`mdp_id`, `sequence_number`, `timestamp`) give the row count, the
   decision-time filter and each row's place in `load_timelines`' order (MDP, then sequence);
2. the full batches are checked and turned into arrays (`trainer.data.build_step_arrays`) and
   written straight into preallocated arrays at those places.

Returns and n-step targets are then computed on the sorted arrays. The tensors are exactly those
`build_transitions` (+ `n_step_transitions`) gives on `load_timelines`' frame, in the same row
order, and the errors name the same row numbers; when several rows are bad, the first batch
holding one decides which check reports (the in-memory path checks all rows at once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.artifact import DataRange
from trainer.data import (
    REQUIRED_COLUMNS,
    RowLabels,
    StepArrays,
    TransitionTensors,
    build_step_arrays,
    build_transitions,
    describe_batch_rows,
    sorted_returns,
    transition_tensors,
)
from trainer.errors import TrainingDataError
from trainer.nstep import apply_n_step, n_step_transitions, sorted_n_step_targets
from trainer.parametric_data import timeline_data_range

DEFAULT_BATCH_ROWS = 262_144
HEAD_ROWS = 256  # rows kept as pandas for the export's parity check on real data
_KEY_COLUMNS = ["mdp_id", "sequence_number", "timestamp"]


@dataclass(frozen=True, slots=True)
class PreparedTimelines:
    """Timelines already turned into DQN tensors, with what the rest of a run needs from them."""

    transitions: TransitionTensors  # n-step targets applied when n_step > 1
    data_range: DataRange
    head: pd.DataFrame  # the first HEAD_ROWS rows in load_timelines' order (export parity checks)
    feature_names: tuple[str, ...]
    actions: tuple[str, ...]
    gamma: float
    reward_clip: float | None
    n_step: int

    def __len__(self) -> int:
        return self.transitions.n_rows


def stream_transitions(
    files: Sequence[Path],
    feature_names: Sequence[str],
    actions: Sequence[str],
    gamma: float,
    reward_clip: float | None = None,
    n_step: int = 1,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    start: datetime | None = None,
    end: datetime | None = None,
) -> PreparedTimelines:
    """Read timeline parquet `files` batch by batch (decision time in [start, end)) into DQN tensors."""
    if len(set(actions)) != len(actions) or not actions:
        raise TrainingDataError(f"actions must be a non-empty list without duplicates, got {list(actions)}")
    parts = [
        _FilePart(Path(f), _row_filter(Path(f), start, end, batch_rows)) for f in _in_days(files, start, end)
    ]
    keys = _read_keys(parts, batch_rows)
    n_rows, first, last = len(keys.sequence), keys.first, keys.last
    if n_rows == 0:
        raise TrainingDataError("timelines are empty; nothing to train on (check the date range loaded)")
    order, mdp_rank = _timeline_order(keys.mdp_ids, keys.sequence)
    codes = mdp_rank[order]  # equal within one MDP, increasing in the sorted order
    del keys, mdp_rank
    place = np.empty(n_rows, dtype=np.int64)
    place[order] = np.arange(n_rows, dtype=np.int64)
    del order
    steps, head = _fill_steps(
        parts, place, n_rows, list(feature_names), list(actions), reward_clip, batch_rows
    )
    data = transition_tensors(steps, sorted_returns(steps.rewards, codes, gamma), gamma)
    if n_step > 1:  # from the float32 rewards, as n_step_transitions has them
        rewards = data.rewards.numpy().astype(np.float64)
        targets = sorted_n_step_targets(rewards, steps.not_terminal, codes, n_step, gamma)
        data = apply_n_step(data, targets, gamma)
    return PreparedTimelines(
        transitions=data,
        data_range=DataRange(start=first, end=last, rows=n_rows),
        head=head,
        feature_names=tuple(feature_names),
        actions=tuple(actions),
        gamma=gamma,
        reward_clip=reward_clip,
        n_step=n_step,
    )


def training_transitions(
    timelines: pd.DataFrame | PreparedTimelines,
    feature_names: Sequence[str],
    actions: Sequence[str],
    gamma: float,
    reward_clip: float | None,
    n_step: int,
) -> TransitionTensors:
    """DQN tensors of in-memory timelines, or the prepared ones after checking they were built alike."""
    if isinstance(timelines, pd.DataFrame):
        return n_step_transitions(
            timelines, build_transitions(timelines, feature_names, actions, gamma, reward_clip), n_step, gamma
        )
    wanted = (tuple(feature_names), tuple(actions), gamma, reward_clip, n_step)
    built = (
        timelines.feature_names,
        timelines.actions,
        timelines.gamma,
        timelines.reward_clip,
        timelines.n_step,
    )
    if wanted != built:
        raise TrainingDataError(
            f"prepared timelines were built for (feature_names, actions, gamma, reward_clip, n_step) = {built}, "
            f"but training asks for {wanted}; build them with the run's spec and algorithm config"
        )
    return timelines.transitions


def training_data_range(timelines: pd.DataFrame | PreparedTimelines) -> DataRange:
    """The decision-time range and row count of in-memory or prepared timelines."""
    if isinstance(timelines, pd.DataFrame):
        return timeline_data_range(timelines)
    return timelines.data_range


@dataclass(frozen=True, slots=True)
class _FilePart:
    path: Path
    keep: np.ndarray | None  # bool per row of the file; None = every row


@dataclass(frozen=True, slots=True)
class _Keys:
    mdp_ids: pa.Array  # string [N], kept rows in file order
    sequence: np.ndarray  # int64 [N]
    first: datetime | None
    last: datetime | None


def _in_days(files: Sequence[Path], start: datetime | None, end: datetime | None) -> list[Path]:
    """Files whose `ds=` day can hold decision times in [start, end) (as `load_timelines` prunes)."""
    low = None if start is None else start.astimezone(UTC).strftime("%Y-%m-%d")
    high = None if end is None else end.astimezone(UTC).strftime("%Y-%m-%d")
    kept = []
    for path in files:
        day = next((p.name[3:] for p in path.parents if p.name.startswith("ds=")), None)
        if day is None or ((low is None or day >= low) and (high is None or day <= high)):
            kept.append(path)
    return kept


# Map keys and list entries are read dictionary-encoded: parquet stores them as dictionary pages
# (a few distinct names), and expanding them into one string per entry was most of the read time
# (most of the read time in benchmarks/training_data.py; the head is cast back to plain strings).
_NAME_COLUMNS = ("state_features", "next_state_features", "possible_actions", "possible_next_actions")


def _batches(
    path: Path, columns: list[str], batch_rows: int, *, names_as_dictionary: bool = False
) -> Iterator[pa.RecordBatch]:
    try:
        file = pq.ParquetFile(path)
        if not names_as_dictionary:
            yield from file.iter_batches(batch_size=batch_rows, columns=columns)
            return
        coded = pq.ParquetFile(path, read_dictionary=_name_leaves(file.schema))
        for group in range(coded.num_row_groups):  # a dictionary is per row group: batches must not span two
            yield from coded.iter_batches(batch_size=batch_rows, columns=columns, row_groups=[group])
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise TrainingDataError(
            f"cannot read timeline file {path}: {exc}; is it a timeline parquet file?"
        ) from exc


def _name_leaves(schema: pq.ParquetSchema) -> list[str]:
    """Paths of the string leaves of the name columns: map keys (a map's values are numbers) and list entries."""
    leaves = (schema.column(i) for i in range(len(schema)))
    return [
        leaf.path
        for leaf in leaves
        if leaf.path.split(".", 1)[0] in _NAME_COLUMNS
        and leaf.physical_type == "BYTE_ARRAY"
        and "." in leaf.path
    ]


def _stamps_ns(column: pa.Array) -> np.ndarray:
    """Decision times as int64 UTC nanoseconds (zone-less INT96 timestamps hold UTC instants)."""
    return (
        column.cast(pa.timestamp("ns", getattr(column.type, "tz", None)))
        .cast(pa.int64())
        .to_numpy(zero_copy_only=False)
    )


def _ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise TrainingDataError(f"time bound {value!r} must be timezone-aware UTC")
    return pd.Timestamp(value).tz_convert(UTC).value


def _row_filter(
    path: Path, start: datetime | None, end: datetime | None, batch_rows: int
) -> np.ndarray | None:
    if start is None and end is None:
        return None
    masks = []
    for batch in _batches(path, ["timestamp"], batch_rows):
        stamps = _stamps_ns(batch.column(0))
        keep = np.ones(len(stamps), dtype=bool)
        if start is not None:
            keep &= stamps >= _ns(start)
        if end is not None:
            keep &= stamps < _ns(end)
        masks.append(keep)
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def _kept(batch: pa.RecordBatch, keep: np.ndarray | None, offset: int) -> pa.RecordBatch:
    if keep is None:
        return batch
    return batch.filter(pa.array(keep[offset : offset + batch.num_rows]))


def _read_keys(parts: list[_FilePart], batch_rows: int) -> _Keys:
    ids: list[pa.Array] = []
    sequence: list[np.ndarray] = []
    first, last = None, None
    for part in parts:
        offset = 0
        for raw in _batches(part.path, _KEY_COLUMNS, batch_rows):
            batch = _kept(raw, part.keep, offset)
            offset += raw.num_rows
            if batch.num_rows == 0:
                continue
            ids.append(batch.column("mdp_id").cast(pa.string()))
            sequence.append(batch.column("sequence_number").to_numpy(zero_copy_only=False).astype(np.int64))
            stamps = _stamps_ns(batch.column("timestamp"))
            first = stamps.min() if first is None else min(first, stamps.min())
            last = stamps.max() if last is None else max(last, stamps.max())
    return _Keys(
        mdp_ids=pa.chunked_array(ids, pa.string()).combine_chunks(),
        sequence=np.concatenate(sequence) if sequence else np.zeros(0, np.int64),
        first=None if first is None else pd.Timestamp(int(first), tz=UTC).to_pydatetime(),
        last=None if last is None else pd.Timestamp(int(last), tz=UTC).to_pydatetime(),
    )


def _timeline_order(mdp_ids: pa.Array, sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable order by mdp_id (as strings, like pandas) then sequence_number; each row's mdp_id rank)."""
    encoded = mdp_ids.dictionary_encode(null_encoding="encode")
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(encoded.dictionary))
    mdp_rank = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    step = np.diff(mdp_rank)
    if ((step > 0) | ((step == 0) & (np.diff(sequence) >= 0))).all():
        return np.arange(len(sequence), dtype=np.int64), mdp_rank  # already in order (the usual case)
    return np.lexsort((sequence, mdp_rank)), mdp_rank


def _fill_steps(
    parts: list[_FilePart],
    place: np.ndarray,
    n_rows: int,
    feature_names: list[str],
    actions: list[str],
    reward_clip: float | None,
    batch_rows: int,
) -> tuple[StepArrays, pd.DataFrame]:
    """Second pass: every batch checked and written at its rows' places; the head rows kept as pandas."""
    width, n_actions = len(feature_names), len(actions)
    steps = StepArrays(
        states=np.empty((n_rows, width), np.float32),
        next_states=np.empty((n_rows, width), np.float32),
        actions=np.empty(n_rows, np.int64),
        rewards=np.empty(n_rows, np.float64),
        not_terminal=np.empty(n_rows, bool),
        possible_mask=np.empty((n_rows, n_actions), np.float32),
        possible_next_mask=np.empty((n_rows, n_actions), np.float32),
    )
    heads: list[pd.DataFrame] = []
    done = 0
    for part in parts:
        offset = 0
        plain = None
        for raw in _read_ahead(
            _batches(part.path, list(REQUIRED_COLUMNS), batch_rows, names_as_dictionary=True)
        ):
            batch = _kept(raw, part.keep, offset)
            offset += raw.num_rows
            if batch.num_rows == 0:
                continue
            rows = place[done : done + batch.num_rows]
            done += batch.num_rows
            columns = {name: batch.column(name) for name in REQUIRED_COLUMNS}
            built = build_step_arrays(columns, feature_names, actions, reward_clip, _labels(batch, rows))
            # rows already in timeline order (the usual case) land by slice, not by scatter
            at = slice(int(rows[0]), int(rows[-1]) + 1) if (np.diff(rows) == 1).all() else rows
            for field in dataclasses.fields(StepArrays):
                getattr(steps, field.name)[at] = getattr(built, field.name)
            in_head = rows < HEAD_ROWS
            if in_head.any():
                if plain is None:  # the head as load_timelines reads it: names as plain strings
                    plain = pq.read_schema(part.path).remove_metadata()
                    plain = pa.schema([plain.field(name) for name in batch.schema.names])
                head_rows = pa.Table.from_batches([batch.filter(pa.array(in_head))]).cast(plain)
                heads.append(head_rows.to_pandas().set_index(pd.Index(rows[in_head])))
    head = pd.concat(heads).sort_index().reset_index(drop=True) if heads else pd.DataFrame()
    return steps, head


def _read_ahead(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches, the next one decoded on a thread while the caller converts this one (Arrow's
    decoding and numpy's copies release the GIL, so the two overlap on two cores)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-read-ahead") as reader:
        pending = reader.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            yield batch


def _labels(batch: pa.RecordBatch, numbers: np.ndarray) -> RowLabels:
    mdp_ids, sequence = batch.column("mdp_id"), batch.column("sequence_number")
    return RowLabels(numbers, lambda rows: describe_batch_rows(numbers, mdp_ids, sequence, rows))
