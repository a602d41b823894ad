"""Training data at volume: timeline parquet → DQN tensors (target ≥ 1,000,000 rows/s, ≤ 4 GB RSS).

Writes `--rows` timeline rows (default 10,000,000; 10-step MDPs, `--features` map entries per
state and next state, 4 actions) as parquet in 1,000,000-row files, never holding them in memory,
then turns them into tensors through the product's chunked path (`trainer.parquet_data`, what
`data.batch_rows` in a run config selects). For reference it also times, on `--reference-rows`
rows held as pandas (as `stream.load_timelines` returns them), the vectorized in-memory path
(`trainer.data.build_transitions`) and the row-by-row code it replaced.

The last line is one JSON object: rows, rows_per_s (chunked path) and max_rss_gb (whole process).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import build_feature_matrix
from stream import timeline_files
from trainer.data import build_transitions, feature_maps
from trainer.parquet_data import stream_transitions

ACTIONS = ["a0", "a1", "a2", "a3"]
EPISODE_STEPS = 10
FILE_ROWS = 1_000_000
GAMMA = 0.9


def _feature_maps(values: np.ndarray, names: list[str]) -> pa.MapArray:
    n, width = values.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    keys = pa.array(np.tile(np.array(names, dtype=object), n), pa.string())
    return pa.MapArray.from_arrays(offsets, keys, pa.array(values.reshape(-1)))


def _chunk(first_row: int, n: int, n_features: int, rng: np.random.Generator) -> pa.Table:
    """Rows first_row … first_row + n − 1 of 10-step MDPs (whole MDPs when n is a multiple of 10)."""
    names = [f"f{j:02d}" for j in range(n_features)]
    row = np.arange(first_row, first_row + n)
    step = row % EPISODE_STEPS
    terminal = step == EPISODE_STEPS - 1
    states = rng.normal(size=(n, n_features))
    next_states = np.roll(states, -1, axis=0)
    action = rng.integers(0, len(ACTIONS), n)
    names_array = np.array(ACTIONS, dtype=object)
    all_actions = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * len(ACTIONS) + 1, len(ACTIONS), dtype=np.int32)),
        pa.array(np.tile(names_array, n), pa.string()),
    )
    next_offsets = np.r_[0, np.cumsum(np.where(terminal, 0, len(ACTIONS)))].astype(np.int32)
    next_actions = pa.ListArray.from_arrays(
        pa.array(next_offsets), pa.array(np.tile(names_array, int((~terminal).sum())), pa.string())
    )
    return pa.table(
        {
            "mdp_id": pa.array([f"mdp-{i:09d}" for i in row // EPISODE_STEPS], pa.string()),
            "sequence_number": pa.array(step, pa.int64()),
            "timestamp": pa.array(
                pd.Timestamp("2026-01-01", tz="UTC").value + row * 1_000_000_000, pa.timestamp("ns", "UTC")
            ),
            "state_features": _feature_maps(states, names),
            "action": pa.array(names_array[action], pa.string()),
            "reward": pa.array(states[:, 0] * (action == 0) + rng.normal(0.0, 0.1, n)),
            "next_state_features": _feature_maps(np.where(terminal[:, None], np.nan, next_states), names),
            "possible_actions": all_actions,
            "possible_next_actions": next_actions,
            "not_terminal": pa.array(~terminal),
        }
    )


def _write(root: Path, rows: int, n_features: int) -> None:
    """`rows` timeline rows under root/timelines/ds=2026-01-01/batch_id=k/, one file per FILE_ROWS."""
    rng = np.random.default_rng(0)
    for k, first in enumerate(range(0, rows, FILE_ROWS)):
        target = root / "timelines" / "ds=2026-01-01" / f"batch_id={k}"
        target.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(target / "part-0.parquet", _chunk(0, 10, n_features, rng).schema) as writer:
            for start in range(first, min(first + FILE_ROWS, rows), 250_000):
                writer.write_table(_chunk(start, min(250_000, rows - start), n_features, rng))


def _as_loaded(table: pa.Table) -> pd.DataFrame:
    """The pandas shape `stream.load_timelines` returns: maps as dicts, lists as lists."""
    frame = table.to_pandas()
    for name in ("state_features", "next_state_features"):
        frame[name] = [dict(items) if items is not None else {} for items in frame[name]]
    for name in ("possible_actions", "possible_next_actions"):
        frame[name] = [list(items) if items is not None else [] for items in frame[name]]
    return frame


def _row_by_row(frame: pd.DataFrame, names: list[str]) -> None:
    """The per-row conversion `trainer.data` used before Arrow columns (same work, no checks)."""
    index = {name: i for i, name in enumerate(ACTIONS)}
    build_feature_matrix(feature_maps(frame["state_features"]), names)
    build_feature_matrix(feature_maps(frame["next_state_features"]), names)
    for column in ("possible_actions", "possible_next_actions"):
        mask = np.zeros((len(frame), len(ACTIONS)), np.float32)
        for row, listed in enumerate(frame[column]):
            for name in listed:
                mask[row, index[name]] = 1.0
    np.array([index[a] for a in frame["action"]])
    rewards = frame["reward"].to_numpy(np.float64)
    order = frame.sort_values(["mdp_id", "sequence_number"], kind="stable")
    returns = np.zeros(len(frame))
    for _, group in order.groupby("mdp_id", sort=False):
        running = 0.0
        for pos in group.index[::-1]:
            running = float(rewards[pos]) + GAMMA * running
            returns[pos] = running


def _max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="training_data", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--reference-rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=262_144)
    parser.add_argument("--n-step", type=int, default=1)
    args = parser.parse_args(argv if argv is not None else [])
    names = [f"f{j:02d}" for j in range(args.features)]
    workdir = Path(tempfile.mkdtemp(prefix="training-data-"))
    try:
        reference = min(args.reference_rows, args.rows)
        sample = _as_loaded(_chunk(0, reference, args.features, np.random.default_rng(1)))
        started = time.perf_counter()
        _row_by_row(sample, names)
        old_rate = reference / (time.perf_counter() - started)
        started = time.perf_counter()
        build_transitions(sample, names, ACTIONS, GAMMA)
        frame_rate = reference / (time.perf_counter() - started)
        print(f"   {reference:,} rows as pandas: row by row (before) {old_rate:,.0f} rows/s, ", end="")
        print(f"Arrow columns {frame_rate:,.0f} rows/s ({frame_rate / old_rate:.1f}×)")
        del sample

        started = time.perf_counter()
        _write(workdir, args.rows, args.features)
        size_gb = sum(f.stat().st_size for f in timeline_files(workdir)) / 1e9
        print(f"   wrote {args.rows:,} rows × {args.features} features: {size_gb:.2f} GB parquet ", end="")
        print(f"in {time.perf_counter() - started:.1f}s")

        started = time.perf_counter()
        prepared = stream_transitions(
            timeline_files(workdir), names, ACTIONS, GAMMA, n_step=args.n_step, batch_rows=args.batch_rows
        )
        elapsed = time.perf_counter() - started
        rate = prepared.transitions.n_rows / elapsed
        tensor_gb = sum(t.numel() * t.element_size() for t in vars_of(prepared.transitions)) / 1e9
        print(
            f"   parquet → tensors in batches of {args.batch_rows:,}: {elapsed:.1f}s, {rate:,.0f} rows/s ",
            end="",
        )
        print(
            f"(target ≥ 1,000,000), tensors {tensor_gb:.2f} GB, max RSS {_max_rss_gb():.2f} GB (target ≤ 4)"
        )
        print(
            json.dumps(
                {
                    "rows": prepared.transitions.n_rows,
                    "rows_per_s": round(rate),
                    "max_rss_gb": round(_max_rss_gb(), 2),
                }
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def vars_of(transitions: object) -> list:
    return [getattr(transitions, name) for name in transitions.__dataclass_fields__]  # type: ignore[attr-defined]
