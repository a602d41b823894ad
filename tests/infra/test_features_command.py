"""`streamrl features status | ack` against a real Feast repo on the session's Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features import NormalizationConfig, fit_normalization, latest_spec, publish_spec
from features.versioning import SpecChangeBlockedError
from infra.cli import main
from infra.config import load_config
from infra.environment import Environment


@pytest.fixture
def environment_file(local_stack, tmp_path: Path) -> tuple[Path, Environment]:
    config = load_config(
        overrides={
            "feature_store": {
                "project": f"cli{tmp_path.name[-6:].lower().replace('-', '')}",
                "feature_names": ["visits", "age"],
            }
        }
    )
    config = config.model_copy(update={"stack": local_stack.config})
    path = tmp_path / "environment.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path, Environment.from_config(config, tmp_path / "run")


def test_status_reports_fresh_online_features(environment_file, capsys) -> None:
    from features import build_feature_store, push_context_features

    path, env = environment_file
    store = build_feature_store(env.feature_store_config())
    names = env.feature_store_config().feature_names
    rows = pd.DataFrame({"entity_id": ["u1", "u2"], "event_timestamp": [datetime.now(UTC)] * 2})
    for name in names:
        rows[name] = [1.0, 2.0]
    push_context_features(store, rows)
    code = main(["features", "status", "--config", str(path), "--run-dir", str(env.run_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fresh" in out and "STALE" not in out
    assert "latest published spec: none" in out


def test_ack_publishes_a_refused_spec(environment_file, capsys) -> None:
    path, env = environment_file
    blocking = NormalizationConfig(block_on_type_change=True)
    rng = np.random.default_rng(0)
    old = fit_normalization(pd.DataFrame({"x": rng.integers(0, 2, 500).astype(float)}))  # binary
    publish_spec(old, env.specs_dir, blocking)
    new = fit_normalization(pd.DataFrame({"x": rng.normal(5.0, 2.0, 500)}))  # continuous: a type change
    with pytest.raises(SpecChangeBlockedError, match="features ack"):
        publish_spec(new, env.specs_dir, blocking, previous=old)
    assert latest_spec(env.specs_dir).version == old.version

    args = ["--config", str(path), "--run-dir", str(env.run_dir)]
    assert (
        main(["features", "ack", "spec-000000000000", *args]) == 1
    )  # unknown version: an error, not a publish
    assert main(["features", "ack", new.version, *args, "--note", "x is now a real-valued score"]) == 0
    assert new.version in capsys.readouterr().out
    assert latest_spec(env.specs_dir).version == new.version
    # acknowledged: the same change no longer blocks
    publish_spec(new, env.specs_dir, blocking, previous=old)
