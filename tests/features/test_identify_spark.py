"""The Spark identification path gives the same spec as the in-process one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import FeatureType, NormalizationConfig, NormalizationFitError, fit_normalization
from features.identify_spark import fit_normalization_spark, spark_feature_columns


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "clicked": rng.integers(0, 2, n).astype(float),
            "ctr": rng.random(n),
            "weekday": rng.integers(0, 7, n).astype(float),
            "age": rng.normal(40.0, 12.0, n),
            "spend": rng.lognormal(0.0, 1.0, n),
            "latency": rng.standard_cauchy(n),
            "volume": rng.uniform(-2.0, 6.0, n),
        }
    )
    frame.loc[::5, "age"] = np.nan
    frame.loc[::7, "ctr"] = np.inf
    return frame


CONFIG = NormalizationConfig(action_features=["volume"], overrides={"clicked": FeatureType.CLIP_LOG})


def test_spark_and_in_process_give_the_same_spec(spark) -> None:
    frame = _frame(1000)
    local = fit_normalization(frame, CONFIG)
    distributed = fit_normalization_spark(spark.createDataFrame(frame), CONFIG)
    assert distributed.version == local.version  # same types and parameters, bit for bit
    assert distributed.data_range.rows == 1000
    for a, b in zip(local.features, distributed.features, strict=True):
        assert a.reason == b.reason
        assert (a.stats.count, a.stats.min, a.stats.max) == (b.stats.count, b.stats.min, b.stats.max)
        assert a.stats.mean == pytest.approx(b.stats.mean) and a.stats.std == pytest.approx(b.stats.std)


def test_spark_samples_large_data_and_identifies_the_same_types(spark) -> None:
    frame = _frame(8000, seed=1)
    config = CONFIG.model_copy(update={"max_sample": 2000})
    local = fit_normalization(frame, config)
    distributed = fit_normalization_spark(spark.createDataFrame(frame), config)
    assert [f.feature_type for f in distributed.features] == [f.feature_type for f in local.features]
    age_local, age_spark = local.feature("age").parameters, distributed.feature("age").parameters
    assert age_spark.mean == pytest.approx(age_local.mean, abs=1.0)
    assert distributed.feature("age").stats.count == local.feature("age").stats.count  # stats: all rows


def test_spark_map_column_and_bad_columns(spark) -> None:
    rows = [({"b": 1.0, "a": 2.0},), ({"a": 3.0},)]
    df = spark_feature_columns(spark.createDataFrame(rows, "state_features map<string,double>"))
    assert df.columns == ["a", "b"] and df.collect()[1]["b"] is None
    with pytest.raises(NormalizationFitError, match="'city' has Spark type string"):
        fit_normalization_spark(spark.createDataFrame([("x", 1.0)], "city string, n double"))
