"""Timelines (one row per MDP step, see docs/architecture.md) → training tensors.

Features stay raw with NaN for missing: the model normalizes inside its own graph, so
training and serving run the same normalization code.

Columns become tensors through Arrow with no per-row Python (`trainer._columns`): map columns
are flattened and scattered into [N, F], action lists into masks, and discounted returns are
computed per MDP with one vectorized step per distance from the MDP's end. The same per-row
checks serve the in-memory path (`build_transitions`, a pandas frame or an Arrow table) and the
chunked parquet path (`trainer.parquet_data`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from trainer._columns import (
    feature_matrix,
    name_mask,
    reverse_discounted_sums,
    segment_bounds,
    string_codes,
    unknown_strings,
)
from trainer.errors import TrainingDataError

REQUIRED_COLUMNS = (
    "mdp_id",
    "sequence_number",
    "state_features",
    "action",
    "reward",
    "next_state_features",
    "possible_actions",
    "possible_next_actions",
    "not_terminal",
)

_MAX_ROWS_NAMED = 5


@dataclass(frozen=True, slots=True)
class TransitionTensors:
    """One tensor per timeline column the DQN update needs; row i is one logged step."""

    states: torch.Tensor  # float32 [N, F] raw, NaN = missing
    next_states: torch.Tensor  # float32 [N, F]
    actions: torch.Tensor  # int64 [N] index into `actions`
    rewards: torch.Tensor  # float32 [N] (clipped if configured)
    not_terminal: torch.Tensor  # float32 [N] 1 = a next step exists
    possible_mask: torch.Tensor  # float32 [N, A]
    possible_next_mask: torch.Tensor  # float32 [N, A]; all 0 on terminal rows
    mc_returns: torch.Tensor  # float32 [N] discounted logged return from this step to the MDP's end
    discounts: torch.Tensor  # float32 [N] factor on the bootstrapped next value: γ, or γ^m for n-step

    @property
    def n_rows(self) -> int:
        return int(self.actions.shape[0])


def feature_maps(values: Iterable[Any]) -> list[dict[str, float]]:
    """Accept dicts or Arrow map values (lists of key/value pairs); drop None (= missing).

    Per row, for callers that want Python dicts; tensors come from `feature_matrix` instead.
    """
    maps: list[dict[str, float]] = []
    for value in values:
        if value is None:
            maps.append({})
            continue
        items = value.items() if isinstance(value, Mapping) else value
        maps.append({str(k): float(v) for k, v in items if v is not None})
    return maps


def build_possible_mask(
    possible_lists: Iterable[Iterable[str] | None], actions: Sequence[str]
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Return the float32 [N, A] mask and, per action not in `actions`, the rows that named it."""
    names = name_mask(_column(possible_lists), actions)
    return names.mask, names.unknown


def mdp_order(mdp_ids: Any, sequence_numbers: Any) -> tuple[np.ndarray, np.ndarray]:
    """(row order by MDP then sequence_number, stable; MDP code of each row in that order).

    MDPs are told apart, not ordered: codes number them in order of first appearance.
    """
    ids, sequence = _column(mdp_ids), _column(sequence_numbers)
    if isinstance(ids, pa.Array):
        codes = ids.dictionary_encode(null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    else:
        codes = pd.factorize(pd.Series(ids), use_na_sentinel=False)[0]
    if isinstance(sequence, pa.Array):
        sequence = sequence.to_numpy(zero_copy_only=False)
    order = np.lexsort((np.asarray(sequence), codes))
    return order, codes[order]


def discounted_returns(timelines: pd.DataFrame, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ·G_{t+1} within each MDP, steps ordered by sequence_number."""
    order, sorted_codes = mdp_order(timelines["mdp_id"], timelines["sequence_number"])
    returns = np.zeros(len(timelines), dtype=np.float64)
    returns[order] = sorted_returns(np.asarray(rewards, dtype=np.float64)[order], sorted_codes, gamma)
    return returns


def sorted_returns(rewards: np.ndarray, mdp_codes: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted returns of rows already ordered by MDP and sequence_number (`mdp_codes` equal within one MDP)."""
    starts, ends = segment_bounds(mdp_codes)
    return reverse_discounted_sums(rewards, ends, ends - starts + 1, gamma)


@dataclass(frozen=True, slots=True)
class StepArrays:
    """One logged step per row as numpy arrays, checked; `TransitionTensors` without the returns."""

    states: np.ndarray  # float32 [N, F]
    next_states: np.ndarray  # float32 [N, F]
    actions: np.ndarray  # int64 [N]
    rewards: np.ndarray  # float64 [N], clipped if configured
    not_terminal: np.ndarray  # bool [N]
    possible_mask: np.ndarray  # float32 [N, A]
    possible_next_mask: np.ndarray  # float32 [N, A], all 0 on terminal rows


@dataclass(frozen=True, slots=True)
class RowLabels:
    """How rows of a batch are named in errors: their numbers in the whole timelines, and a describer."""

    numbers: np.ndarray  # int64 [N]: row i of the batch is row numbers[i] of the timelines
    describe: Callable[[np.ndarray], str]  # local rows → "[row (mdp_id=…, seq=…), …]"


def build_step_arrays(
    columns: Mapping[str, Any],
    feature_names: Sequence[str],
    actions: Sequence[str],
    reward_clip: float | None,
    labels: RowLabels,
) -> StepArrays:
    """Check one batch of timeline columns (Arrow arrays, pandas Series or lists) and build its arrays.

    The checks run in a fixed order (unknown logged action, unknown possible and possible next
    actions, logged action not possible, non-finite reward, non-terminal without next actions);
    every error names the rows to look at.
    """
    logged = _strings(columns["action"])
    action_idx = string_codes(logged, actions)
    _raise_unknown(unknown_strings(logged, action_idx), "action", labels, actions)
    possible = name_mask(_column(columns["possible_actions"]), actions)
    _raise_unknown(possible.unknown, "possible_actions", labels, actions)
    possible_next = name_mask(_column(columns["possible_next_actions"]), actions)
    _raise_unknown(possible_next.unknown, "possible_next_actions", labels, actions)
    mask, next_mask = possible.mask, possible_next.mask

    not_possible = np.flatnonzero(mask[np.arange(len(action_idx)), action_idx] == 0)
    if len(not_possible):
        raise TrainingDataError(
            f"logged action is not among possible_actions in rows {labels.describe(not_possible)}; "
            "fix the logging app or drop these rows",
            column="possible_actions",
            rows=labels.numbers[not_possible].tolist(),
        )

    rewards = _floats(columns["reward"])
    _check_rewards(rewards, labels)
    if reward_clip is not None:
        rewards = np.clip(rewards, -reward_clip, reward_clip)

    not_terminal = _bools(columns["not_terminal"])
    no_next = np.flatnonzero(not_terminal & (next_mask.sum(axis=1) == 0))
    if len(no_next):
        raise TrainingDataError(
            f"non-terminal rows {labels.describe(no_next)} have no possible_next_actions; "
            "a step with a successor needs at least one possible next action",
            column="possible_next_actions",
            rows=labels.numbers[no_next].tolist(),
        )
    next_mask[~not_terminal] = 0.0
    return StepArrays(
        states=feature_matrix(_column(columns["state_features"]), feature_names),
        next_states=feature_matrix(_column(columns["next_state_features"]), feature_names),
        actions=action_idx,
        rewards=rewards,
        not_terminal=not_terminal,
        possible_mask=mask,
        possible_next_mask=next_mask,
    )


def build_transitions(
    timelines: pd.DataFrame | pa.Table,
    feature_names: Sequence[str],
    actions: Sequence[str],
    gamma: float,
    reward_clip: float | None = None,
) -> TransitionTensors:
    """Validate the timelines and build the tensors; every problem names the rows to look at.

    `timelines` is a pandas frame (maps as dicts or key/value pairs, lists as lists) or an Arrow
    table (map and list columns as read from parquet); both give the same tensors.
    """
    _check_columns(list(timelines.column_names if isinstance(timelines, pa.Table) else timelines.columns))
    if len(timelines) == 0:
        raise TrainingDataError("timelines are empty; nothing to train on (check the date range loaded)")
    _check_actions(actions)
    if isinstance(timelines, pa.Table):
        columns: Mapping[str, Any] = {name: timelines.column(name) for name in REQUIRED_COLUMNS}
        labels = _table_labels(timelines)
    else:
        frame = timelines.reset_index(drop=True)
        columns = {name: frame[name] for name in REQUIRED_COLUMNS}
        labels = RowLabels(np.arange(len(frame), dtype=np.int64), lambda rows: describe_rows(frame, rows))
    steps = build_step_arrays(columns, feature_names, actions, reward_clip, labels)
    order, sorted_codes = mdp_order(columns["mdp_id"], columns["sequence_number"])
    returns = np.zeros(len(order), dtype=np.float64)
    returns[order] = sorted_returns(steps.rewards[order], sorted_codes, gamma)
    return transition_tensors(steps, returns, gamma)


def transition_tensors(steps: StepArrays, returns: np.ndarray, gamma: float) -> TransitionTensors:
    """Wrap checked step arrays and their returns as tensors (no copy where the dtype already fits)."""
    return TransitionTensors(
        states=torch.from_numpy(np.ascontiguousarray(steps.states, dtype=np.float32)),
        next_states=torch.from_numpy(np.ascontiguousarray(steps.next_states, dtype=np.float32)),
        actions=torch.from_numpy(np.ascontiguousarray(steps.actions, dtype=np.int64)),
        rewards=torch.from_numpy(steps.rewards.astype(np.float32)),
        not_terminal=torch.from_numpy(steps.not_terminal.astype(np.float32)),
        possible_mask=torch.from_numpy(np.ascontiguousarray(steps.possible_mask, dtype=np.float32)),
        possible_next_mask=torch.from_numpy(np.ascontiguousarray(steps.possible_next_mask, dtype=np.float32)),
        mc_returns=torch.from_numpy(returns.astype(np.float32)),
        discounts=torch.full((len(steps.actions),), gamma, dtype=torch.float32),
    )


def _check_actions(actions: Sequence[str]) -> None:
    if len(set(actions)) != len(actions) or not actions:
        raise TrainingDataError(f"actions must be a non-empty list without duplicates, got {list(actions)}")


def _check_columns(columns: Sequence[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise TrainingDataError(
            f"timelines lack columns {missing} (have {sorted(columns)}); "
            "load them with stream.load_timelines",
            column=missing[0],
        )


def checked_rewards(frame: pd.DataFrame, reward_clip: float | None) -> np.ndarray:
    """The `reward` column as float64, clipped to ±`reward_clip`; a non-finite reward names its rows."""
    rewards = frame["reward"].to_numpy(dtype=np.float64)
    _check_rewards(
        rewards, RowLabels(np.arange(len(frame), dtype=np.int64), lambda rows: describe_rows(frame, rows))
    )
    return rewards if reward_clip is None else np.clip(rewards, -reward_clip, reward_clip)


def _check_rewards(rewards: np.ndarray, labels: RowLabels) -> None:
    bad = np.flatnonzero(~np.isfinite(rewards))
    if len(bad):
        raise TrainingDataError(
            f"reward is not finite in rows {labels.describe(bad)}; rewards must be real numbers",
            column="reward",
            rows=labels.numbers[bad].tolist(),
        )


def describe_rows(frame: pd.DataFrame, rows: Sequence[int] | np.ndarray) -> str:
    """Row numbers with their mdp_id and sequence number, for error messages (first few only)."""
    rows = list(rows)
    return _named_rows(
        [int(r) for r in rows[:_MAX_ROWS_NAMED]],
        [frame.at[int(r), "mdp_id"] for r in rows[:_MAX_ROWS_NAMED]],
        [frame.at[int(r), "sequence_number"] for r in rows[:_MAX_ROWS_NAMED]],
        len(rows),
    )


def describe_batch_rows(
    numbers: np.ndarray, mdp_ids: pa.Array, sequence_numbers: pa.Array | np.ndarray, rows: np.ndarray
) -> str:
    """`describe_rows` for a batch of Arrow columns: `numbers` are the rows' numbers in the whole timelines."""
    rows = np.asarray(rows, dtype=np.int64)
    first = rows[np.argsort(numbers[rows], kind="stable")][:_MAX_ROWS_NAMED]
    picked = pa.array(first)
    return _named_rows(
        numbers[first].tolist(),
        mdp_ids.take(picked).to_pylist(),
        pa.array(sequence_numbers).take(picked).to_pylist(),
        len(rows),
    )


def _named_rows(numbers: list[int], mdp_ids: list[Any], sequence_numbers: list[Any], total: int) -> str:
    named = ", ".join(
        f"{n} (mdp_id={m!r}, seq={s})" for n, m, s in zip(numbers, mdp_ids, sequence_numbers, strict=True)
    )
    more = f" and {total - _MAX_ROWS_NAMED} more" if total > _MAX_ROWS_NAMED else ""
    return f"[{named}{more}]"


def _table_labels(table: pa.Table | pa.RecordBatch, numbers: np.ndarray | None = None) -> RowLabels:
    numbers = np.arange(table.num_rows, dtype=np.int64) if numbers is None else numbers
    mdp_ids = _column(table.column("mdp_id"))
    sequence = _column(table.column("sequence_number"))
    return RowLabels(numbers, lambda rows: describe_batch_rows(numbers, mdp_ids, sequence, rows))


def _raise_unknown(
    unknown: dict[str, list[int]], column: str, labels: RowLabels, actions: Sequence[str]
) -> None:
    """Name the unknown value seen first (by row number in the whole timelines) and all rows of all of them."""
    if not unknown:
        return
    numbered = {name: sorted(int(labels.numbers[r]) for r in rows) for name, rows in unknown.items()}
    names = sorted(numbered, key=lambda name: numbered[name][0])
    name, rows = names[0], unknown[names[0]]
    others = f" (also unknown: {sorted(unknown)[:5]})" if len(unknown) > 1 else ""
    raise TrainingDataError(
        f"{column} {name!r} in {len(rows)} row(s) {labels.describe(np.asarray(rows))} is not one of the model's "
        f"actions {list(actions)}{others}; add it to `actions` or filter these rows out",
        column=column,
        rows=[r for n in names for r in numbered[n]],
    )


def _column(values: Any) -> Any:
    """Arrow columns as one array; pandas and numpy columns as they are; other iterables as a list."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, (pa.Array, pd.Series, np.ndarray, list)):
        return values
    return list(values)


def _strings(values: Any) -> pa.Array:
    """A string column as Arrow strings; None reads as 'None' (as pandas' `astype(str)` has it)."""
    values = _column(values)
    if isinstance(values, pa.Array):
        strings = values if pa.types.is_string(values.type) else values.cast(pa.string())
        return strings.fill_null("None") if strings.null_count else strings
    return pa.array(pd.Series(values).astype(str).to_numpy(dtype=object), pa.string())


def _floats(values: Any) -> np.ndarray:
    values = _column(values)
    if isinstance(values, pa.Array):
        return values.cast(pa.float64()).to_numpy(zero_copy_only=False).copy()
    return pd.Series(values).to_numpy(dtype=np.float64).copy()


def _bools(values: Any) -> np.ndarray:
    values = _column(values)
    if isinstance(values, pa.Array):
        return values.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False)
    return pd.Series(values).to_numpy(dtype=bool)
