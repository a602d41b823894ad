"""Between-batch state of the timeline job as parquet snapshots, and the batch clock.

`state/batch=N/` holds what is still open after batch N (rows of `ARROW_ROW_SCHEMA` of kinds decision,
reward and closed), written and read with pyarrow on the driver. Batch N reads the newest complete snapshot below N and overwrites its own, so
replaying a batch after a crash gives the same result. The newest two snapshots are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import StreamrlError
from stream._rows import ARROW_ROW_SCHEMA

_COMPLETE_MARKER = "_COMPLETE"
_KEEP_SNAPSHOTS = 2


class TimelineStateError(StreamrlError):
    """The checkpoint or state snapshots of the timeline job are missing or unreadable."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class BatchClock:
    """What the offset log says about batch N: its planning clock and whether it read anything."""

    clock_ms: int
    has_new_records: bool


def _source_offset(checkpoint_dir: Path, batch_id: int) -> dict | None:
    path = checkpoint_dir / "offsets" / str(batch_id)
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    # Line 0 is the log version, line 1 the batch metadata, then one line per source.
    if len(lines) < 3:
        raise TimelineStateError(
            f"offset log {path} has no source offset line; was the checkpoint written by another query?",
            path=path,
        )
    return json.loads(lines[2])


def read_batch_clock(checkpoint_dir: Path, batch_id: int) -> BatchClock:
    """The clock planned for batch N, from Spark's offset log (so a replay sees the same clock)."""
    end = _source_offset(checkpoint_dir, batch_id)
    if end is None or "clock_ms" not in end:
        raise TimelineStateError(
            f"no offset with clock_ms for batch {batch_id} under {checkpoint_dir / 'offsets'}; the timeline "
            "job must read from the streamrl_kafka source with this checkpoint directory",
            path=checkpoint_dir,
        )
    start = _source_offset(checkpoint_dir, batch_id - 1) if batch_id > 0 else None
    has_new = start is None or start.get("partitions") != end.get("partitions")
    return BatchClock(clock_ms=int(end["clock_ms"]), has_new_records=has_new)


def _snapshot_ids(state_dir: Path) -> list[int]:
    if not state_dir.exists():
        return []
    return sorted(
        int(child.name.removeprefix("batch="))
        for child in state_dir.iterdir()
        if child.name.startswith("batch=") and (child / _COMPLETE_MARKER).exists()
    )


def newest_snapshot_before(state_dir: Path, batch_id: int) -> int | None:
    """The id of the newest complete snapshot written by a batch before `batch_id` (None: none)."""
    earlier = [i for i in _snapshot_ids(state_dir) if i < batch_id]
    return earlier[-1] if earlier else None


def load_state(state_dir: Path, snapshot_id: int | None) -> pa.Table:
    """Snapshot `snapshot_id` in `ARROW_ROW_SCHEMA` (empty for None).

    Snapshots written by Spark (before the Arrow passes) read too: their INT96 timestamps come back
    zone-less and are cast to UTC."""
    if snapshot_id is None:
        return ARROW_ROW_SCHEMA.empty_table()
    root = state_dir / f"batch={snapshot_id}"
    try:
        table = pq.read_table(root)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TimelineStateError(f"cannot read state snapshot {root}: {exc}", path=root) from exc
    columns = {}
    for field in ARROW_ROW_SCHEMA:
        column = (
            table.column(field.name) if field.name in table.column_names else pa.nulls(len(table), field.type)
        )
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC")
        columns[field.name] = column.cast(field.type)
    return pa.table(columns, schema=ARROW_ROW_SCHEMA)


def save_state(state_dir: Path, batch_id: int, state: pa.Table) -> None:
    """Overwrite batch N's snapshot, mark it complete, and drop all but the newest two."""
    root = state_dir / f"batch={batch_id}"
    (root / _COMPLETE_MARKER).unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    try:
        root.mkdir(parents=True)
        pq.write_table(state, root / "part-00000.parquet", compression="lz4")
        (root / _COMPLETE_MARKER).write_text(str(batch_id))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # incomplete: never read, but it would hold space
        raise
    kept = [i for i in _snapshot_ids(state_dir) if i <= batch_id][-_KEEP_SNAPSHOTS:]
    for child in state_dir.iterdir():
        if child.name.startswith("batch=") and int(child.name.removeprefix("batch=")) < kept[0]:
            shutil.rmtree(child, ignore_errors=True)
