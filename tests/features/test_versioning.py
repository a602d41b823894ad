"""Publishing specs: diff against the previous one, the acknowledgement gate, the HTML report, PSI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import (
    FeatureType,
    NormalizationConfig,
    SpecChangeBlockedError,
    SpecError,
    acknowledge_spec,
    fit_normalization,
    latest_spec,
    population_stability,
    publish_spec,
)


def _frame(shift: float = 0.0, n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40.0 + shift, 10.0, n),
            "weekday": rng.integers(0, 7, n).astype(float),
            "spend": rng.lognormal(0.0, 1.0, n),
        }
    )


BLOCKING = NormalizationConfig(block_on_type_change=True, block_on_parameter_shift=True)


def test_type_change_blocks_until_acknowledged_then_is_the_new_baseline(tmp_path: Path) -> None:
    first = publish_spec(fit_normalization(_frame(), BLOCKING), tmp_path, BLOCKING, frame=_frame())
    assert first.diff is None and latest_spec(tmp_path) == first.spec
    forced = BLOCKING.model_copy(update={"overrides": {"weekday": FeatureType.CONTINUOUS}})
    new = fit_normalization(_frame(seed=1), forced)
    with pytest.raises(
        SpecChangeBlockedError, match=r"type change weekday: enum → continuous.*features ack"
    ) as info:
        publish_spec(new, tmp_path, forced, previous=first.spec, frame=_frame(seed=1))
    blocked = info.value
    assert blocked.pending_path == tmp_path / "pending" / f"normalization_{new.version}.json"
    assert blocked.report_path is not None and blocked.report_path.exists()
    assert latest_spec(tmp_path) == first.spec  # a refused spec is never the next baseline

    acknowledge_spec(tmp_path, new.version, note="weekday is an ordinal now")
    assert latest_spec(tmp_path).version == new.version and not blocked.pending_path.exists()
    again = fit_normalization(_frame(seed=2), forced)  # next night, newer data, same types
    assert publish_spec(again, tmp_path, forced, previous=latest_spec(tmp_path)).diff.type_changes == []


def test_large_shift_blocks_only_when_configured(tmp_path: Path) -> None:
    old = fit_normalization(_frame())
    shifted = fit_normalization(_frame(shift=30.0))
    relaxed = publish_spec(shifted, tmp_path, NormalizationConfig(), previous=old)
    assert [s.parameter for s in relaxed.diff.parameter_shifts] == ["mean"]  # reported, not blocked
    with pytest.raises(SpecChangeBlockedError, match="age.mean"):
        publish_spec(shifted, tmp_path / "strict", BLOCKING, previous=old)


def test_ack_of_unknown_version_and_corrupt_files_are_precise_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no spec 'spec-nope'.*pending specs: none"):
        acknowledge_spec(tmp_path, "spec-nope")
    spec = fit_normalization(_frame())
    path = publish_spec(spec, tmp_path, NormalizationConfig(report=False)).path
    path.write_text(path.read_text()[:100])
    with pytest.raises(SpecError, match=f"{path.name} is not a valid spec"):
        latest_spec(tmp_path)
    (tmp_path / "acknowledged.json").write_text("{not json")
    with pytest.raises(SpecError, match="acknowledged.json is not valid"):
        publish_spec(spec, tmp_path, BLOCKING, previous=fit_normalization(_frame(shift=30.0)))


def test_report_has_plots_reasons_and_drift(tmp_path: Path) -> None:
    old_frame, new_frame = _frame(), _frame(shift=15.0, seed=3)
    old = fit_normalization(old_frame)
    published = publish_spec(
        fit_normalization(new_frame), tmp_path, NormalizationConfig(), previous=old, frame=new_frame
    )
    page = published.report_path
    assert page == tmp_path / f"report_{published.spec.version}" / "index.html"
    text = page.read_text()
    for name in ("age", "weekday", "spend"):
        png = page.parent / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"src='{name}.png'" in text
    assert "skewed: D&#x27;Agostino" in text or "skewed: D'Agostino" in text  # the why, escaped
    assert "(major)" in text and "(stable)" in text  # age moved 1.5 stddevs; weekday did not
    assert "<td class='n'>mean: " in text and "old stddevs" in text  # the diff's shift, on its feature


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    stats = fit_normalization(_frame()).feature("age").stats
    assert population_stability(stats, _frame(seed=5)["age"].to_numpy()) < 0.02
    assert population_stability(stats, _frame(shift=10.0, seed=5)["age"].to_numpy()) > 0.25
    assert population_stability(stats, np.array([np.nan])) is None
