"""Type identification on data built to have each shape, overrides and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import (
    FeatureType,
    NormalizationConfig,
    NormalizationFitError,
    fit_normalization,
    frame_from_feature_maps,
)


def _frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "clicked": rng.integers(0, 2, n).astype(float),
            "constant": np.full(n, 7.0),
            "ctr": rng.random(n),
            "weekday": rng.integers(0, 7, n).astype(float),
            "age": rng.normal(40.0, 12.0, n),
            "spend": rng.lognormal(0.0, 1.0, n),
            "latency": rng.standard_cauchy(n),
            "many_ints": np.round(rng.normal(100.0, 15.0, n)),
        }
    )
    frame.loc[::5, "age"] = np.nan
    frame.loc[::11, "ctr"] = np.inf
    return frame


def test_each_shape_is_identified_as_its_type() -> None:
    spec = fit_normalization(_frame())
    types = {f.name: f.feature_type for f in spec.features}
    assert types == {
        "clicked": FeatureType.BINARY,
        "constant": FeatureType.BINARY,
        "ctr": FeatureType.PROBABILITY,
        "weekday": FeatureType.ENUM,
        "age": FeatureType.CONTINUOUS,
        "spend": FeatureType.BOXCOX,
        "latency": FeatureType.QUANTILE,
        "many_ints": FeatureType.CONTINUOUS,
    }
    assert spec.feature_names == list(_frame().columns)
    assert spec.feature("weekday").parameters.possible_values == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    age = spec.feature("age")
    assert age.parameters.mean == pytest.approx(40.0, abs=1.0)
    assert age.parameters.stddev == pytest.approx(12.0, rel=0.1)
    assert age.stats.missing_share == pytest.approx(0.2, abs=0.01)
    assert spec.feature("ctr").stats.missing_share == pytest.approx(1 / 11, abs=0.01)  # inf counts as missing
    # 8 features; weekday is 7 one-hot columns; plus 8 presence columns.
    assert spec.output_dim == 7 + 7 + 8


def test_refinement_can_be_switched_off_and_small_samples_stay_continuous() -> None:
    frame = _frame()[["spend", "latency"]]
    spec = fit_normalization(frame, NormalizationConfig(identify_boxcox_quantile=False))
    assert [f.feature_type for f in spec.features] == [FeatureType.CONTINUOUS] * 2
    small = fit_normalization(frame.head(15))
    assert [f.feature_type for f in small.features] == [FeatureType.CONTINUOUS] * 2


def test_max_enum_values_and_stddev_floor() -> None:
    frame = pd.DataFrame({"level": np.arange(12, dtype=float) % 12, "flat": [5.0, 5.00001] * 6})
    spec = fit_normalization(frame, NormalizationConfig(max_enum_values=12))
    assert spec.feature("level").feature_type is FeatureType.ENUM
    spec = fit_normalization(frame)
    assert spec.feature("level").feature_type is FeatureType.CONTINUOUS
    assert spec.feature("flat").parameters.stddev == 1.0  # tiny stddev is not used to scale


def test_overrides_force_types_and_give_all_missing_feature_neutral_parameters() -> None:
    frame = _frame().assign(empty=np.nan)
    config = NormalizationConfig(
        overrides={"weekday": FeatureType.CONTINUOUS, "spend": FeatureType.DO_NOT_PREPROCESS,
                   "empty": FeatureType.CONTINUOUS, "age": FeatureType.CONTINUOUS_ACTION},
    )  # fmt: skip
    spec = fit_normalization(frame, config)
    assert spec.feature("weekday").feature_type is FeatureType.CONTINUOUS
    assert spec.feature("spend").feature_type is FeatureType.DO_NOT_PREPROCESS
    assert spec.feature("empty").parameters.mean == 0.0 and spec.feature("empty").stats.count == 0
    age = spec.feature("age").parameters
    assert age.min_value == pytest.approx(frame["age"].min()) and age.max_value == pytest.approx(
        frame["age"].max()
    )


def test_bad_input_raises_precise_errors() -> None:
    with pytest.raises(NormalizationFitError, match="'empty' has no present values"):
        fit_normalization(pd.DataFrame({"ok": [1.0, 2.0], "empty": [np.nan, np.inf]}))
    with pytest.raises(NormalizationFitError, match="'city' has dtype object"):
        fit_normalization(pd.DataFrame({"city": ["a", "b"]}))
    with pytest.raises(NormalizationFitError, match=r"\['typo'\]"):
        fit_normalization(_frame(), NormalizationConfig(overrides={"typo": FeatureType.BINARY}))
    with pytest.raises(NormalizationFitError, match="forced to ENUM"):
        fit_normalization(_frame(), NormalizationConfig(overrides={"age": FeatureType.ENUM}))


def test_same_data_gives_same_version_and_sampling_is_deterministic() -> None:
    config = NormalizationConfig(max_sample=500)
    a = fit_normalization(_frame(), config)
    b = fit_normalization(_frame(), config)
    assert a.version == b.version and a.version.startswith("spec-")
    c = fit_normalization(_frame(seed=1), config)
    assert c.version != a.version


def test_action_features_map_their_full_range_and_say_why() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"volume": rng.uniform(-2.0, 6.0, 500), "age": rng.normal(40.0, 12.0, 500)})
    spec = fit_normalization(frame, NormalizationConfig(action_features=["volume"]))
    volume = spec.feature("volume")
    assert volume.feature_type is FeatureType.CONTINUOUS_ACTION
    assert (volume.parameters.min_value, volume.parameters.max_value) == (
        frame.volume.min(),
        frame.volume.max(),
    )
    assert volume.reason.startswith("action feature")
    assert spec.feature("age").feature_type is FeatureType.CONTINUOUS  # not an action: identified as usual
    with pytest.raises(NormalizationFitError, match=r"\['typo'\]"):
        fit_normalization(frame, NormalizationConfig(action_features=["typo"]))


def test_clip_log_and_forced_parameters_come_from_config() -> None:
    config = NormalizationConfig.model_validate(
        {
            "overrides": {
                "spend": "clip_log",
                "age": {"feature_type": "continuous", "parameters": {"mean": 1.0, "stddev": 2.0}},
                "latency": {"feature_type": "quantile", "parameters": {"quantiles": [-1.0, 0.0, 1.0]}},
            }
        }
    )
    spec = fit_normalization(_frame(), config)
    assert spec.feature("spend").feature_type is FeatureType.CLIP_LOG
    age = spec.feature("age")
    assert (age.parameters.mean, age.parameters.stddev) == (1.0, 2.0)  # verbatim, not fitted (≈ 40, 12)
    assert age.reason == "type and parameters forced by config"
    assert spec.feature("latency").parameters.quantiles == [-1.0, 0.0, 1.0]
    bad = NormalizationConfig(overrides={"weekday": {"feature_type": "enum", "parameters": {"mean": 3.0}}})
    with pytest.raises(NormalizationFitError, match="'weekday': forced parameters do not fit type enum"):
        fit_normalization(_frame(), bad)


def test_every_identified_feature_records_why_and_decile_bins() -> None:
    spec = fit_normalization(_frame())
    reasons = {f.name: f.reason for f in spec.features}
    assert reasons["constant"].startswith("constant: every present value is 7")
    assert reasons["spend"].startswith("skewed: D'Agostino K²")
    assert reasons["latency"].startswith("very non-normal")
    assert "one-hot" in reasons["weekday"]
    age = spec.feature("age").stats
    assert len(age.bin_edges) == 9 and sum(age.bin_shares) == pytest.approx(1.0)
    assert spec.feature("constant").stats.bin_edges == [7.0]


def test_mixed_types_name_the_feature_and_examples_and_numeric_text_is_accepted() -> None:
    mixed = pd.DataFrame({"ok": [1.0, 2.0, 3.0], "score": [1.5, "n/a", 2.0]})
    with pytest.raises(
        NormalizationFitError, match=r"'score' mixes numbers and non-numbers: 1 of 3.*'n/a'"
    ) as info:
        fit_normalization(mixed)
    assert info.value.feature == "score"
    with pytest.raises(NormalizationFitError, match="'score' mixes numbers"):
        frame_from_feature_maps([{"score": 1.0}, {"score": "n/a"}])
    as_text = pd.DataFrame({"score": ["1.5", "2.5", None, "4"]}, dtype=object)
    spec = fit_normalization(as_text)  # numbers stored as text: the documented fallback converts them
    assert spec.feature("score").stats.count == 3


def test_all_missing_feature_can_fall_back_to_neutral_parameters() -> None:
    frame = pd.DataFrame({"ok": [1.0, 2.0, 5.0], "empty": [np.nan, np.inf, None]})
    spec = fit_normalization(frame, NormalizationConfig(all_missing="neutral"))
    empty = spec.feature("empty")
    assert empty.feature_type is FeatureType.CONTINUOUS and empty.parameters.mean == 0.0
    assert empty.stats.missing_share == 1.0 and "all_missing: neutral" in empty.reason
