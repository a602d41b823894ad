"""Arrow timeline columns → numpy arrays with no per-row Python (the vectorized core of trainer.data).

Map columns (`state_features`) and list columns (`possible_actions`) are flattened to one entry
per (row, key) through their offsets; keys become column numbers through `pyarrow.compute`
(or, when every row carries the same keys in the same order, through one byte comparison), and
values are scattered into a float32 [N, F] matrix that starts as NaN (= missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FEATURE_MAP = pa.map_(pa.string(), pa.float64())
NAME_LIST = pa.list_(pa.string())


def arrow_column(values: Any, data_type: pa.DataType) -> pa.Array:
    """One Arrow array from an Arrow (chunked) array, a pandas Series or any iterable of Python values.

    Maps may be dicts or lists of (key, value) pairs; None is null.
    """
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, pd.Series):
        values = values.to_numpy(dtype=object)
    elif not isinstance(values, (list, np.ndarray)):
        values = list(values)
    return pa.array(values, type=data_type, from_pandas=True)


@dataclass(frozen=True, slots=True)
class _Flat:
    """The entries of a list-like column: `parents[i]` is the row of entry i, `items` the entries."""

    parents: np.ndarray  # int64 [E]
    items: pa.Array  # [E]


def _flatten(column: pa.Array) -> _Flat:
    """Entries of a list or map array, respecting slicing and null rows (their entries are dropped)."""
    offsets = column.offsets.to_numpy().astype(np.int64)
    spans = np.diff(offsets)
    items = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        items = items.filter(pa.array(np.repeat(valid, spans)))
        spans = np.where(valid, spans, 0)
    parents = np.repeat(np.arange(len(column), dtype=np.int64), spans)
    return _Flat(parents, items)


def string_codes(strings: pa.Array, names: Sequence[str]) -> np.ndarray:
    """int64 index of each string in `names`; -1 for a string not among them (or null).

    A dictionary-encoded array (`trainer.parquet_data` reads map keys and list entries that way, so
    the file's dictionary pages are never expanded into one string per entry) is looked up once per
    dictionary entry, then gathered by its indices.
    """
    if pa.types.is_dictionary(strings.type):
        table = np.r_[string_codes(strings.dictionary, names), -1]  # index −1 (null) reads the −1 at the end
        indices = strings.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return table[indices]
    codes = pc.index_in(strings, value_set=pa.array(list(names), pa.string()))
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _repeated_key_codes(keys: pa.Array, n_rows: int, names: Sequence[str]) -> np.ndarray | None:
    """Codes of `keys` when every one of `n_rows` rows holds the first row's keys in the same order.

    Checked byte for byte on the Arrow buffers, so the answer is exact; None when the rows differ.
    """
    if n_rows == 0 or len(keys) % n_rows or keys.null_count:
        return None
    per_row = len(keys) // n_rows
    if pa.types.is_dictionary(keys.type):  # the same dictionary index is the same string
        indices = keys.indices.to_numpy(zero_copy_only=False).reshape(n_rows, per_row)
        if not (indices == indices[0]).all():
            return None
        return string_codes(keys.slice(0, per_row), names)
    if not pa.types.is_string(keys.type):
        return None
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset : keys.offset + len(keys) + 1]
    data = np.frombuffer(keys.buffers()[2], dtype=np.uint8)
    row_bytes = int(offsets[per_row] - offsets[0])
    if int(offsets[-1] - offsets[0]) != row_bytes * n_rows:
        return None
    lengths = np.diff(offsets).reshape(n_rows, per_row)
    if not (lengths == lengths[0]).all():
        return None
    block = data[offsets[0] : offsets[-1]].reshape(n_rows, row_bytes)
    if not (block == block[0]).all():
        return None
    return string_codes(keys.slice(0, per_row), names)


def feature_matrix(column: Any, feature_names: Sequence[str]) -> np.ndarray:
    """Dense float32 [N, F] in `feature_names` order from a map column; absent keys and nulls are NaN.

    Keys not in `feature_names` are ignored; a key repeated in one row keeps its last non-null value.
    """
    maps = arrow_column(column, FEATURE_MAP)
    n_rows, width = len(maps), len(feature_names)
    dense = _dense_entries(maps, feature_names) if n_rows and width else None
    if dense is not None:  # every row holds the same keys in the same order
        codes, numbers = dense
        known = codes >= 0
        if len(codes) == width and (codes == np.arange(width)).all():  # the spec's order; NaN = missing
            return numbers.astype(np.float32)
    matrix = np.full((n_rows, width), np.nan, dtype=np.float32)
    if n_rows == 0 or width == 0:
        return matrix
    if dense is not None:
        if np.unique(codes[known]).size == known.sum():  # each feature once per row: NaN is missing anyway
            matrix[:, codes[known]] = numbers[:, known]
            return matrix
        numbers = numbers[:, known]
        for k, code in enumerate(codes[known]):  # one pass per key, not per row
            present = ~np.isnan(numbers[:, k])
            matrix[present, code] = numbers[present, k]
        return matrix
    flat = _flatten(maps)
    keys, values = flat.items.field(0), _float_values(flat.items.field(1))
    numbers = values.to_numpy(zero_copy_only=False)
    codes = string_codes(keys, feature_names)
    keep = codes >= 0
    if values.null_count:
        keep &= values.is_valid().to_numpy(zero_copy_only=False)
    matrix.reshape(-1)[flat.parents[keep] * width + codes[keep]] = numbers[keep]
    return matrix


def _float_values(values: pa.Array) -> pa.Array:
    return values if pa.types.is_floating(values.type) else values.cast(pa.float64())


def _dense_entries(maps: pa.Array, feature_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(code per key position, float64 values [N, K]) when every row has the first row's K keys in order.

    Null values read NaN, which is what the matrix holds for missing anyway.
    """
    offsets = maps.offsets.to_numpy()
    spans = np.diff(offsets)
    if maps.null_count or spans[0] == 0 or (spans != spans[0]).any():
        return None
    items = maps.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    codes = _repeated_key_codes(items.field(0), len(maps), feature_names)
    if codes is None:
        return None
    per_row = int(spans[0])
    numbers = _float_values(items.field(1)).to_numpy(zero_copy_only=False).reshape(len(maps), per_row)
    return codes[:per_row], numbers


@dataclass(frozen=True, slots=True)
class NameMask:
    """A [N, A] 0/1 mask of which names each row's list holds, and the names outside the vocabulary."""

    mask: np.ndarray  # float32 [N, A]
    unknown: dict[str, list[int]]  # name → the rows naming it, in first-seen order (a row per occurrence)


# Up to this many rows given as Python lists, masks are built by dictionary lookups: Arrow's fixed
# cost per call (~0.3 ms) was a quarter of a served decision's CPU (serving passes one request's list).
_SMALL_ROWS = 64


def name_mask(column: Any, names: Sequence[str]) -> NameMask:
    """Which of `names` each row's list names (null list = none); unknown entries (and nulls) are reported."""
    if isinstance(column, list) and len(column) <= _SMALL_ROWS:
        small = _small_name_mask(column, names)
        if small is not None:
            return small
    lists = arrow_column(column, NAME_LIST)
    mask = np.zeros((len(lists), len(names)), dtype=np.float32)
    if len(lists) == 0:
        return NameMask(mask, {})
    same = _same_names(lists, names)
    if same is not None:  # every non-empty row lists the same known names in the same order
        rows, codes = same
        mask[np.ix_(rows, codes)] = 1.0
        return NameMask(mask, {})
    flat = _flatten(lists)
    items = flat.items.type
    entries = (
        flat.items
        if pa.types.is_string(items) or pa.types.is_dictionary(items)
        else flat.items.cast(pa.string())
    )
    codes = string_codes(entries, names)
    if (codes >= 0).all():  # flat positions: a third of the cost of a 2-D fancy index
        mask.reshape(-1)[flat.parents * len(names) + codes] = 1.0
        return NameMask(mask, {})
    known = codes >= 0
    mask[flat.parents[known], codes[known]] = 1.0
    return NameMask(mask, _unknown_rows(entries, codes, flat.parents))


def _same_names(lists: pa.Array, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(the non-empty rows, the codes of their names) when each lists the first one's known names in
    order and the rest are empty (terminal rows' next actions); None otherwise."""
    if lists.null_count:
        return None
    offsets = lists.offsets.to_numpy()
    spans = np.diff(offsets)
    width = int(spans.max())
    full = spans == width
    if width == 0 or not (full | (spans == 0)).all():
        return None
    items = lists.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    codes = _repeated_key_codes(items, int(full.sum()), names)
    if codes is None or (codes < 0).any() or np.unique(codes).size != codes.size:
        return None
    return np.flatnonzero(full), codes


def _small_name_mask(lists: list[Any], names: Sequence[str]) -> NameMask | None:
    """`name_mask` of a few Python lists of strings (or None); None when an entry is neither str nor None."""
    index = {name: i for i, name in enumerate(names)}
    mask = np.zeros((len(lists), len(names)), dtype=np.float32)
    unknown: dict[str, list[int]] = {}
    for row, listed in enumerate(lists):
        if isinstance(listed, str):
            return None  # a bare string is not a list of names: Arrow's path says so
        for name in listed if listed is not None else ():
            code = index.get(name) if isinstance(name, str) else None
            if code is not None:
                mask[row, code] = 1.0
            elif name is None or isinstance(name, str):
                unknown.setdefault(str(name), []).append(row)
            else:
                return None  # Arrow's path decides what a non-string entry means
    return NameMask(mask, unknown)


def _unknown_rows(strings: pa.Array, codes: np.ndarray, rows: np.ndarray) -> dict[str, list[int]]:
    """name → rows for entries with code -1, names in order of first appearance (null reads 'None')."""
    bad = np.flatnonzero(codes < 0)
    if len(bad) == 0:
        return {}
    found = strings.take(pa.array(bad)).cast(pa.string()).fill_null("None").to_pylist()
    unknown: dict[str, list[int]] = {}
    for name, row in zip(found, rows[bad].tolist(), strict=True):
        unknown.setdefault(str(name), []).append(int(row))
    return unknown


def unknown_strings(strings: pa.Array, codes: np.ndarray) -> dict[str, list[int]]:
    """name → rows of a string column whose code is -1 (not a known name), in first-seen order."""
    return _unknown_rows(strings, codes, np.arange(len(strings), dtype=np.int64))


def segment_bounds(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) position of each run of equal values in `segments` (sorted so MDPs are contiguous)."""
    n = len(segments)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
    ends = np.r_[starts[1:], n] - 1
    return starts, ends


def reverse_discounted_sums(
    rewards: np.ndarray, ends: np.ndarray, lengths: np.ndarray, gamma: float
) -> np.ndarray:
    """G_t = r_t + γ·G_(t+1) within each contiguous segment (`ends`: last positions, `lengths`: sizes).

    One vectorized step per distance from the segment's end (loop over the longest MDP, not over rows),
    with the same float64 operations as the one-row-at-a-time recursion.
    """
    returns = np.zeros(len(rewards), dtype=np.float64)
    if len(ends) == 0:
        return returns
    by_length = np.argsort(-lengths, kind="stable")
    ends_desc, lengths_desc = ends[by_length], lengths[by_length]
    returns[ends] = rewards[ends]
    for distance in range(1, int(lengths_desc[0])):
        alive = int(np.searchsorted(-lengths_desc, -distance, side="left"))
        rows = ends_desc[:alive] - distance
        returns[rows] = rewards[rows] + gamma * returns[rows + 1]
    return returns
