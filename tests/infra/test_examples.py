"""Every `examples/*.yaml` trains and registers with `streamrl train --config FILE`, and serving
loads the model it registered.

Each example runs as written except for sizes (one epoch, tiny networks) and paths (a
tmp folder). Its timelines are synthetic but of the example's own action kind and action names,
written as parquet where the stream job writes them, so `stream.load_timelines` reads them
exactly as it reads the job's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kind_timelines import TIMELINES, write_timelines

from serving.model_holder import load_model
from trainer import ModelRegistry, load_run_config
from trainer.algorithms import ALGORITHM_KINDS, TRAIN_FUNCTIONS

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

# Sizes small enough for a few seconds per run; only keys the algorithm's config has are set.
TINY = {"num_epochs": 1, "hidden_sizes": [8], "batch_size": 32}


def _small_run(example: Path, root: Path) -> tuple[Path, dict[str, Any]]:
    """The example with tiny sizes and every path under `root`; returns the new file and its content."""
    run = yaml.safe_load(example.read_text(encoding="utf-8"))
    fields = type(load_run_config(example).algorithm).model_fields
    run["algorithm"].update({k: v for k, v in TINY.items() if k in fields})
    run["data"] = {"output_dir": "data"}  # not "stream": the cwd must not shadow a package
    run["output"] = {"registry_dir": "registry", "log_dir": "tb"}
    if run.get("checkpoint") is not None:
        run["checkpoint"]["dir"] = "ckpt"
    path = root / example.name
    path.write_text(yaml.safe_dump(run), encoding="utf-8")
    return path, run


def test_one_example_per_algorithm_type() -> None:
    types = [yaml.safe_load(p.read_text(encoding="utf-8"))["algorithm"]["type"] for p in EXAMPLES]
    assert sorted(types) == sorted(TRAIN_FUNCTIONS)
    assert [p.stem for p in EXAMPLES] == sorted(TRAIN_FUNCTIONS)  # examples/<type>.yaml


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_as_written_with_paths_beside_the_repository(example: Path) -> None:
    config = load_run_config(example)
    assert config.algorithm.type == example.stem
    # `../runs/...` from examples/ is the repository's runs/ folder, where `streamrl demo` and
    # `benchmarks.served_loop` write; the model goes to the registry of the same run folder.
    run_dir = config.data.output_dir.resolve().parent
    assert run_dir.is_relative_to(EXAMPLES_DIR.parent / "runs") and config.data.output_dir.name == "timelines"
    assert config.output.registry_dir.resolve() == run_dir / "registry"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_registers_and_is_served(example: Path, tmp_path: Path) -> None:
    path, run = _small_run(example, tmp_path)
    kind = ALGORITHM_KINDS[run["algorithm"]["type"]]
    write_timelines(TIMELINES[kind](run, np.random.default_rng(7)), tmp_path / "data")

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRL_")}
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "train", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    registry = ModelRegistry(tmp_path / "registry")
    (version,) = registry.list_versions()
    assert f"registered {example.stem} model {version} in {tmp_path / 'registry'}" in done.stdout
    metadata = registry.metadata(version)
    assert (metadata.algorithm, metadata.action_kind) == (example.stem, kind)
    assert registry.deployed() is None  # training registers; only the gate deploys

    if run.get("checkpoint") is not None:  # the example's checkpoint section took effect
        assert sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*.pt")), "no checkpoint written"

    loaded = load_model(registry, version)  # what serving does before it swaps a model in
    assert loaded.version == version and loaded.metadata.action_kind == kind
