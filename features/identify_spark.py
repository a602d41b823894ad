"""`fit_normalization` on Spark, for feature tables that do not fit in one process's memory.

Spark computes what needs every row — present counts, min, max, mean, stddev per feature — in one
aggregation, and collects a row sample of about `max_sample` rows. Identification then runs on
that sample with the very same function as the in-process path (`features.identify.fit_feature`).
When every feature has ≤ `max_sample` present values, both paths see the same values and give the
same spec (same version). Beyond that both identify on a random sample of `max_sample` values and
agree within sampling error (types the same; parameters close). Spark is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from features.identify import NormalizationConfig, NormalizationFitError, fit_feature
from features.spec import DataRange, FeatureStats, NormalizationSpec

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["fit_normalization_spark", "spark_feature_columns"]


def _check_numeric(df: DataFrame) -> None:
    from pyspark.sql.types import BooleanType, NumericType

    for field in df.schema.fields:
        if not isinstance(field.dataType, NumericType | BooleanType):
            raise NormalizationFitError(
                f"feature column {field.name!r} has Spark type {field.dataType.simpleString()}, expected a "
                "numeric type (one double column per feature, null/NaN for missing); cast or drop it",
                feature=field.name,
            )


def fit_normalization_spark(
    df: DataFrame, config: NormalizationConfig | None = None, data_range: DataRange | None = None
) -> NormalizationSpec:
    """Fit a spec with one entry per column of the Spark DataFrame `df`; null/NaN/±inf = missing."""
    from pyspark.sql import functions as F

    config = config or NormalizationConfig()
    names = list(df.columns)
    if not names:
        raise NormalizationFitError("fit_normalization_spark got a DataFrame with no feature columns")
    config.check_names(names)
    _check_numeric(df)
    inf = float("inf")
    present = {}
    for i, name in enumerate(names):
        c = F.col(f"`{name}`").cast("double")
        present[name] = F.when(~F.isnan(c) & (c != inf) & (c != -inf), c).alias(f"v{i}")
    finite = df.select(*present.values())
    aggregates = [F.count(F.lit(1)).alias("rows")]
    for i in range(len(names)):
        v = F.col(f"v{i}")
        aggregates += [
            F.count(v).alias(f"n{i}"),
            F.min(v).alias(f"min{i}"),
            F.max(v).alias(f"max{i}"),
            F.avg(v).alias(f"mean{i}"),
            F.stddev_pop(v).alias(f"std{i}"),
        ]
    row = finite.agg(*aggregates).first().asDict()
    total = int(row["rows"])
    counts = [int(row[f"n{i}"]) for i in range(len(names))]

    # Everything when no feature has more present values than the sample size (then the in-process
    # path sees exactly the same values); else a row sample of ~max_sample rows.
    sampled = finite
    if max(counts) > config.max_sample:
        sampled = finite.sample(fraction=min(1.0, 1.2 * config.max_sample / total), seed=config.seed)
    collected = sampled.toPandas()

    rng = np.random.default_rng(config.seed)
    features = []
    for i, name in enumerate(names):
        values = collected[f"v{i}"].to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[np.isfinite(values)]
        if values.size > config.max_sample:
            values = rng.choice(values, config.max_sample, replace=False)
        n = counts[i]
        stats = FeatureStats(
            count=n,
            missing_share=float(1.0 - n / total) if total else 0.0,
            min=row[f"min{i}"] if n else None,
            max=row[f"max{i}"] if n else None,
            mean=row[f"mean{i}"] if n else None,
            std=row[f"std{i}"] if n else None,
        )
        features.append(fit_feature(name, np.sort(values), stats, config))
    return NormalizationSpec.create(features, data_range=data_range or DataRange(rows=total))


def spark_feature_columns(df: DataFrame, column: str = "state_features") -> DataFrame:
    """One double column per key of a map column (sorted, like `frame_from_feature_maps`)."""
    from pyspark.sql import functions as F

    keys = sorted(r[0] for r in df.select(F.explode(F.map_keys(F.col(column)))).distinct().collect())
    return df.select(*[F.col(column)[k].cast("double").alias(k) for k in keys])
