"""Write synthetic timelines where the stream job would (`output_dir/timelines/ds=…/batch_id=0/`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from trainer_timelines import BANDIT_ACTIONS

from stream._layout import timelines_path

_MAP = pa.map_(pa.string(), pa.float64())
_LIST = pa.list_(pa.string())
_SCHEMA = pa.schema(
    [
        ("mdp_id", pa.string()),
        ("request_id", pa.string()),
        ("entity_id", pa.string()),
        ("sequence_number", pa.int64()),
        ("sequence_number_ordinal", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("state_features", _MAP),
        ("action", pa.string()),
        ("action_probability", pa.float64()),
        ("reward", pa.float64()),
        ("reward_observed", pa.bool_()),
        ("metrics", _MAP),
        ("possible_actions", _LIST),
        ("next_state_features", _MAP),
        ("next_action", pa.string()),
        ("possible_next_actions", _LIST),
        ("time_diff", pa.int64()),
        ("time_since_first", pa.int64()),
        ("not_terminal", pa.bool_()),
        ("model_version", pa.string()),
    ]
)


def write_timelines(frame: pd.DataFrame, output_dir: Path) -> None:
    """One parquet file per day, in the layout `stream.load_timelines` reads."""
    columns = list(_SCHEMA.names)
    for ds, day in frame.groupby("ds"):
        data = {c: day[c].tolist() for c in columns}
        for name in ("state_features", "metrics", "next_state_features"):
            data[name] = [list(m.items()) for m in data[name]]
        target = timelines_path(output_dir) / f"ds={ds}" / "batch_id=0"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(data, schema=_SCHEMA), target / "part-0.parquet")


def write_run_config(root: Path, algorithm: dict, *, checkpoint: dict | None = None, actions=None) -> Path:
    """A run YAML under `root` with relative paths (timelines in root/stream, outputs beside it)."""
    document = {
        "schema_version": 1,
        "name": "test-run",
        "data": {"output_dir": "stream", "start": "2026-11-23T00:00:00Z", "end": "2026-11-24T00:00:00Z"},
        "actions": list(actions or BANDIT_ACTIONS),
        "algorithm": {"type": "dqn", **algorithm},
        "exploration": {"type": "epsilon_greedy", "epsilon": 0.1},
        "output": {"registry_dir": "registry", "log_dir": "tb"},
    }
    if checkpoint is not None:
        document["checkpoint"] = checkpoint
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path
