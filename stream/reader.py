"""Read timeline parquet back as pandas, with the column types the later stages expect."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from contracts import StreamrlError
from contracts.actions import (
    ACTION_FEATURES_COLUMN,
    ACTION_VECTOR_COLUMN,
    POSSIBLE_ACTION_FEATURES_COLUMN,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
    ActionKind,
)
from stream._layout import ACTION_KIND_COLUMNS, TIMELINE_COLUMNS, timelines_path

_MAP_COLUMNS = ("state_features", "metrics", "next_state_features")
_LIST_COLUMNS = ("possible_actions", "possible_next_actions")
_LISTING_ATTEMPTS = 20  # a replayed batch is swapped in by one rename: one retry is normally enough
_PARTITIONING = pads.partitioning(pa.schema([("ds", pa.string()), ("batch_id", pa.int64())]), flavor="hive")


def _feature_maps(items: Iterable[Iterable[tuple[str, float]]]) -> list[dict[str, float]]:
    return [dict(features) for features in items]


def _floats(items: Iterable[float]) -> list[float]:
    return [float(x) for x in items]


# Kind columns (`contracts.actions.KIND_COLUMNS`) in their pandas shape; None on rows of other kinds.
_KIND_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    ACTION_FEATURES_COLUMN: dict,
    POSSIBLE_ACTION_FEATURES_COLUMN: _feature_maps,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN: _feature_maps,
    ACTION_VECTOR_COLUMN: _floats,
}


class TimelineReadError(StreamrlError):
    """Timelines could not be read from the output directory."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise TimelineReadError(f"{name}={value!r} must be timezone-aware UTC", path=Path("."))
    return value.astimezone(UTC)


def _timestamp_scalar(value: datetime, stored: pa.DataType) -> pa.Scalar:
    """A filter bound in the file's own timestamp type.

    Spark writes INT96 timestamps, which Arrow reads as zone-less nanoseconds holding UTC
    instants; comparing them with a zone-aware scalar is not defined, so the bound matches.
    """
    if getattr(stored, "tz", None) is None:
        return pa.scalar(value.astimezone(UTC).replace(tzinfo=None), stored)
    return pa.scalar(value, stored)


def load_timelines(
    output_dir: str | Path, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """Timeline rows with decision time in [start, end), ordered by mdp_id and sequence_number.

    Maps come back as `dict[str, float]` and lists as `list[str]`; an empty frame with the right
    columns when nothing has been written yet. The action-kind columns are None (NaN for
    `action_log_density`) on rows of other kinds; rows written before action kinds existed read
    as `action_kind` "discrete" with those columns None.
    """
    start = _utc(start, "start") if start is not None else None
    end = _utc(end, "end") if end is not None else None
    root = timelines_path(Path(output_dir))
    empty = pd.DataFrame({name: pd.Series(dtype=object) for name in TIMELINE_COLUMNS})
    try:
        table = _read_committed(root, start, end)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TimelineReadError(f"cannot read timelines under {root}: {exc}", path=root) from exc
    if table is None:
        return empty
    frame = table.to_pandas()
    for name in _MAP_COLUMNS:
        frame[name] = [dict(items) if items is not None else {} for items in frame[name]]
    for name in _LIST_COLUMNS:
        frame[name] = [list(items) if items is not None else [] for items in frame[name]]
    for name, convert in _KIND_CONVERTERS.items():
        frame[name] = [convert(value) if value is not None else None for value in frame[name]]
    frame["action_kind"] = frame["action_kind"].fillna(ActionKind.DISCRETE.value).astype(str)
    frame["next_action"] = frame["next_action"].astype(object).where(frame["next_action"].notna(), None)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    for name in ("sequence_number", "sequence_number_ordinal", "time_diff", "time_since_first"):
        frame[name] = frame[name].astype("int64")
    frame["ds"] = frame["ds"].astype(str)
    return frame.sort_values(["mdp_id", "sequence_number"], kind="stable").reset_index(drop=True)


def timeline_files(output_dir: str | Path) -> list[Path]:
    """The committed timeline parquet files under `output_dir`, sorted by path (the order
    `load_timelines` reads them). Spark stages new files under dot-directories, which this skips."""
    return sorted(timelines_path(Path(output_dir)).glob("ds=*/batch_id=*/*.parquet"), key=str)


class _ListingChanged(OSError):
    """The committed files changed during a read (a batch rewritten in place): read again."""


@retry(
    retry=retry_if_exception_type((FileNotFoundError, _ListingChanged)),
    stop=stop_after_attempt(_LISTING_ATTEMPTS),
    wait=wait_fixed(0.1),
    reraise=True,
)
def _read_committed(root: Path, start: datetime | None, end: datetime | None) -> pa.Table | None:
    """Read the committed files, listing them afresh on each attempt.

    A batch the stream job replays after a restart is rewritten in place (Spark's dynamic partition
    overwrite deletes `batch_id=N/` and renames the new files in), so a file listed a moment ago can
    vanish before it is opened; listing again finds the replacement. None when nothing is written.
    """
    # Only committed files: Spark stages new ones under dot-directories, which pyarrow would list.
    files = [str(f) for f in timeline_files(root.parent)]
    if not files:
        return None
    options = {"format": "parquet", "partitioning": _PARTITIONING, "partition_base_dir": str(root)}
    inferred = pads.dataset(files, **options).schema  # from one file: maybe older than action kinds
    dataset = pads.dataset(files, schema=_with_action_kind_columns(inferred), **options)
    condition = None
    stored = dataset.schema.field("timestamp").type
    if start is not None:
        condition = (pads.field("ds") >= start.strftime("%Y-%m-%d")) & (
            pads.field("timestamp") >= _timestamp_scalar(start, stored)
        )
    if end is not None:
        upper = (pads.field("ds") <= end.strftime("%Y-%m-%d")) & (
            pads.field("timestamp") < _timestamp_scalar(end, stored)
        )
        condition = upper if condition is None else condition & upper
    table = dataset.to_table(columns=TIMELINE_COLUMNS, filter=condition)
    # A listing taken while a replayed batch is being deleted holds only the files not yet gone, and
    # they read without error: accept the table only if the files did not change under the read.
    if [str(f) for f in timeline_files(root.parent)] != files:
        raise _ListingChanged(f"the committed files under {root} changed while they were read")
    return table


def _with_action_kind_columns(schema: pa.Schema) -> pa.Schema:
    """The dataset schema (inferred from one file) with every action-kind column in its known type.

    Partitions written before action kinds lack those columns: declaring them makes Arrow fill
    them with nulls there, and read them from newer files whichever file the schema came from.
    """
    for name, data_type in ACTION_KIND_COLUMNS.items():
        index = schema.get_field_index(name)
        field = pa.field(name, data_type)
        schema = schema.append(field) if index < 0 else schema.set(index, field)
    return schema
