"""Where and in what shape the timeline job writes (shared by the job and the reader, no Spark import)."""

from __future__ import annotations

from pathlib import Path

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
]


def timelines_path(output_dir: Path) -> Path:
    """`output_dir/timelines`, partitioned as `ds=YYYY-MM-DD/batch_id=N/`."""
    return Path(output_dir) / "timelines"
