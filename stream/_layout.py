"""Where and in what shape the timeline job writes (shared by the job and the reader, no Spark import)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from contracts.actions import (
    ACTION_FEATURES_COLUMN,
    ACTION_LOG_DENSITY_COLUMN,
    ACTION_VECTOR_COLUMN,
    POSSIBLE_ACTION_FEATURES_COLUMN,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
)

_FEATURE_MAP = pa.map_(pa.string(), pa.float64())

# Columns added with action kinds, and their Arrow types: partitions written before them lack them.
ACTION_KIND_COLUMNS: dict[str, pa.DataType] = {
    "action_kind": pa.string(),
    ACTION_FEATURES_COLUMN: _FEATURE_MAP,
    POSSIBLE_ACTION_FEATURES_COLUMN: pa.list_(_FEATURE_MAP),
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN: pa.list_(_FEATURE_MAP),
    ACTION_VECTOR_COLUMN: pa.list_(pa.float64()),
    ACTION_LOG_DENSITY_COLUMN: pa.float64(),
}

TIMELINE_COLUMNS = [
    "mdp_id",
    "request_id",
    "entity_id",
    "sequence_number",
    "sequence_number_ordinal",
    "timestamp",
    "ds",
    "state_features",
    "action",
    "action_probability",
    "reward",
    "reward_observed",
    "metrics",
    "possible_actions",
    "next_state_features",
    "next_action",
    "possible_next_actions",
    "time_diff",
    "time_since_first",
    "not_terminal",
    "model_version",
    *ACTION_KIND_COLUMNS,
]


def timelines_path(output_dir: Path) -> Path:
    """`output_dir/timelines`, partitioned as `ds=YYYY-MM-DD/batch_id=N/`."""
    return Path(output_dir) / "timelines"
