"""Write synthetic timelines where the stream job would (`output_dir/timelines/ds=…/batch_id=0/`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from trainer_timelines import BANDIT_ACTIONS

from tests.helpers import write_timeline_partition


def write_timelines(frame: pd.DataFrame, output_dir: Path) -> None:
    """One parquet file per day, in the layout `stream.load_timelines` reads."""
    for ds, day in frame.groupby("ds"):
        write_timeline_partition(day.to_dict("records"), output_dir, str(ds))


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
