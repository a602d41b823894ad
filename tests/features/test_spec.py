"""Spec files: save/load round trip, corrupt or edited files, and diffs that surface type changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import (
    FeatureType,
    NormalizationConfig,
    SpecError,
    diff_specs,
    fit_normalization,
    load_spec,
    save_spec,
)


def _frame(shift: float = 0.0, n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "age": rng.normal(40.0 + shift, 10.0, n),
            "weekday": rng.integers(0, 7, n).astype(float),
            "ctr": rng.random(n),
        }
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    spec = fit_normalization(_frame())
    path = save_spec(spec, tmp_path / "specs")
    assert path.name == f"normalization_{spec.version}.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_spec(path)
    assert loaded == spec
    assert loaded.content_sha256 == spec.content_sha256


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda text: text[: len(text) // 2], "not a valid spec"),
        (lambda text: text.replace('"continuous"', '"gaussian"'), "feature_type"),
        (lambda text: text.replace('"schema_version": 1', '"schema_version": 9'), "schema_version"),
        (lambda text: text.replace('"mean": ', '"mean": 1', 1), "does not match the content"),
    ],
)
def test_corrupt_or_edited_file_raises_spec_error_naming_the_file(
    tmp_path: Path, mutate, problem: str
) -> None:
    path = save_spec(fit_normalization(_frame()), tmp_path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(SpecError, match=problem) as info:
        load_spec(path)
    assert str(path) in str(info.value) and info.value.path == path


def test_missing_file_raises_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.json")


def test_diff_reports_type_change_added_removed_and_shift() -> None:
    old = fit_normalization(_frame())
    new_frame = _frame(shift=30.0).drop(columns=["ctr"]).assign(clicked=1.0)
    new = fit_normalization(new_frame, NormalizationConfig(overrides={"weekday": FeatureType.CONTINUOUS}))
    diff = diff_specs(old, new)
    assert diff.added == ["clicked"] and diff.removed == ["ctr"]
    assert [(c.name, c.old, c.new) for c in diff.type_changes] == [
        ("weekday", FeatureType.ENUM, FeatureType.CONTINUOUS)
    ]
    assert [(s.name, s.parameter) for s in diff.parameter_shifts] == [("age", "mean")]
    assert not diff.is_input_compatible
    assert "TYPE CHANGE weekday: enum → continuous" in diff.summary()


def test_diff_of_refit_on_same_distribution_is_quiet() -> None:
    old = fit_normalization(_frame())
    new = fit_normalization(_frame().sample(frac=0.5, random_state=1))
    diff = diff_specs(old, new)
    assert diff.is_input_compatible and not diff.parameter_shifts, diff.summary()
    assert json.loads(diff.model_dump_json())["type_changes"] == []
