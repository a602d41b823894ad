"""Identify each feature's type from a sample of its values and fit its parameters.

Rules, in order, on the present (finite) values of a sample (Horizon's, see REFERENCE §2):
  1. all values in {0, 1}, or a single distinct value          → BINARY
  2. all values in [0, 1]                                        → PROBABILITY (logit, clamped)
  3. non-negative integers with ≤ `max_enum_values` distinct    → ENUM (one-hot)
  4. otherwise CONTINUOUS, refined when `identify_boxcox_quantile`:
     - fewer than `min_samples_for_refinement` values or range < 1e-4 → plain CONTINUOUS
     - BOXCOX if the fitted λ is outside [0.9, 1.1], the D'Agostino K² of the raw values is
       > 10× that of the transformed values and the transformed K² ≤ 1000
     - else QUANTILE if the raw K² > 1000
     - else CONTINUOUS: standardize with mean and stddev; a stddev < `min_stddev` becomes 1.0
       (no scaling) so near-constant features do not explode.
NaN and ±inf count as missing. A feature with no present values cannot be fitted: that raises
`NormalizationFitError`, unless it has an override, in which case it gets neutral parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from contracts import StreamrlError
from features.spec import (
    DataRange,
    FeatureNormalization,
    FeatureStats,
    FeatureType,
    NormalizationParameters,
    NormalizationSpec,
)

__all__ = ["NormalizationConfig", "NormalizationFitError", "fit_normalization"]

BOXCOX_MARGIN = 1e-4


class NormalizationFitError(StreamrlError):
    """The input to `fit_normalization` cannot be fitted (wrong dtype, no values, bad override)."""

    def __init__(self, message: str, *, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class NormalizationConfig(BaseModel):
    """How features are identified; `overrides` force a type for named features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    max_sample: int = Field(100_000, gt=0, description="values per feature used for identification")
    max_enum_values: int = Field(10, ge=2)
    quantile_count: int = Field(20, ge=2, description="number of quantile intervals for QUANTILE")
    identify_boxcox_quantile: bool = True
    min_samples_for_refinement: int = Field(20, ge=8)
    min_stddev: float = Field(1e-4, gt=0)
    overrides: dict[str, FeatureType] = Field(default_factory=dict)
    seed: int = 0


def _present_values(name: str, column: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column):
        column = column.astype(np.float64)
    if not pd.api.types.is_numeric_dtype(column):
        raise NormalizationFitError(
            f"feature column {name!r} has dtype {column.dtype}, expected a numeric dtype "
            "(one float column per feature, NaN for missing); convert it or drop it before fitting",
            feature=name,
        )
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _stats(values: np.ndarray, total: int) -> FeatureStats:
    if values.size == 0:
        return FeatureStats(count=0, missing_share=1.0 if total else 0.0)
    return FeatureStats(
        count=int(values.size),
        missing_share=float(1.0 - values.size / total) if total else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean()),
        std=float(values.std()),
    )


def _k2(values: np.ndarray) -> float:
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        statistic = float(stats.normaltest(values).statistic)
    return statistic if math.isfinite(statistic) else math.inf


def _mean_std(values: np.ndarray, config: NormalizationConfig) -> tuple[float, float]:
    mean, std = float(values.mean()), float(values.std())
    if not math.isfinite(std) or std < config.min_stddev:
        std = 1.0
    return mean, std


def _continuous(values: np.ndarray, config: NormalizationConfig) -> NormalizationParameters:
    mean, std = _mean_std(values, config)
    return NormalizationParameters(mean=mean, stddev=std)


def _quantile(values: np.ndarray, config: NormalizationConfig) -> NormalizationParameters | None:
    boundaries = np.unique(np.quantile(values, np.linspace(0.0, 1.0, config.quantile_count + 1)))
    if boundaries.size < 2:
        return None
    return NormalizationParameters(
        quantiles=[float(b) for b in boundaries], min_value=float(values.min()), max_value=float(values.max())
    )


def _boxcox(values: np.ndarray, config: NormalizationConfig) -> NormalizationParameters:
    from scipy import stats

    shift = BOXCOX_MARGIN - float(values.min())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformed, lam = stats.boxcox(values + shift)
    mean, std = _mean_std(transformed, config)
    return NormalizationParameters(mean=mean, stddev=std, boxcox_lambda=float(lam), boxcox_shift=shift)


def _refine_continuous(
    values: np.ndarray, config: NormalizationConfig
) -> tuple[FeatureType, NormalizationParameters]:
    """CONTINUOUS, or BOXCOX/QUANTILE when the values are far from normal (REFERENCE §2)."""
    if (
        not config.identify_boxcox_quantile
        or values.size < config.min_samples_for_refinement
        or float(values.max() - values.min()) < 1e-4
    ):
        return FeatureType.CONTINUOUS, _continuous(values, config)
    k2_raw = _k2(values)
    boxcox = _boxcox(values, config)
    lam = boxcox.boxcox_lambda
    if lam is not None and not (0.9 <= lam <= 1.1) and math.isfinite(lam):
        shifted = values + boxcox.boxcox_shift
        transformed = np.log(shifted) if lam == 0 else (np.power(shifted, lam) - 1.0) / lam
        k2_transformed = _k2(transformed)
        if k2_raw > 10.0 * k2_transformed and k2_transformed <= 1000.0:
            return FeatureType.BOXCOX, boxcox
    if k2_raw > 1000.0:
        quantile = _quantile(values, config)
        if quantile is not None:
            return FeatureType.QUANTILE, quantile
    return FeatureType.CONTINUOUS, _continuous(values, config)


def _identify(values: np.ndarray, config: NormalizationConfig) -> tuple[FeatureType, NormalizationParameters]:
    distinct = np.unique(values)
    if distinct.size <= 1 or np.all((distinct == 0.0) | (distinct == 1.0)):
        return FeatureType.BINARY, NormalizationParameters()
    if distinct.min() >= 0.0 and distinct.max() <= 1.0:
        return FeatureType.PROBABILITY, NormalizationParameters()
    if (
        distinct.min() >= 0.0
        and np.all(distinct == np.floor(distinct))
        and distinct.size <= config.max_enum_values
    ):
        return FeatureType.ENUM, NormalizationParameters(possible_values=[float(v) for v in distinct])
    return _refine_continuous(values, config)


def _fit_forced(
    name: str, kind: FeatureType, values: np.ndarray, config: NormalizationConfig
) -> NormalizationParameters:
    """Parameters for a type forced by an override; neutral ones when there are no values."""
    empty = values.size == 0
    if kind in (FeatureType.BINARY, FeatureType.PROBABILITY, FeatureType.DO_NOT_PREPROCESS):
        return NormalizationParameters()
    if kind is FeatureType.CONTINUOUS:
        return NormalizationParameters() if empty else _continuous(values, config)
    if kind is FeatureType.ENUM:
        distinct = np.unique(values)
        if empty or not np.all(distinct == np.floor(distinct)):
            raise NormalizationFitError(
                f"feature {name!r} is forced to ENUM but its values are "
                f"{'all missing' if empty else 'not integers'}; an ENUM needs integer values to one-hot",
                feature=name,
            )
        return NormalizationParameters(possible_values=[float(v) for v in distinct])
    if kind is FeatureType.CONTINUOUS_ACTION:
        if empty or float(values.max()) <= float(values.min()):
            raise NormalizationFitError(
                f"feature {name!r} is forced to CONTINUOUS_ACTION but has no value range to map to (-1, 1)",
                feature=name,
            )
        return NormalizationParameters(min_value=float(values.min()), max_value=float(values.max()))
    if kind is FeatureType.BOXCOX:
        if values.size < 2 or float(values.max() - values.min()) < 1e-4:
            raise NormalizationFitError(
                f"feature {name!r} is forced to BOXCOX but has too few values", feature=name
            )
        return _boxcox(values, config)
    if kind is FeatureType.QUANTILE:
        quantile = None if empty else _quantile(values, config)
        if quantile is None:
            raise NormalizationFitError(
                f"feature {name!r} is forced to QUANTILE but has fewer than 2 distinct values", feature=name
            )
        return quantile
    raise AssertionError(kind)  # pragma: no cover


def fit_normalization(
    frame: pd.DataFrame,
    config: NormalizationConfig | None = None,
    data_range: DataRange | None = None,
) -> NormalizationSpec:
    """Fit a spec with one entry per column of `frame` (in column order); NaN/±inf = missing."""
    config = config or NormalizationConfig()
    if frame.shape[1] == 0:
        raise NormalizationFitError("fit_normalization got a frame with no feature columns")
    names = [str(c) for c in frame.columns]
    unknown = sorted(set(config.overrides) - set(names))
    if unknown:
        raise NormalizationFitError(
            f"overrides name features {unknown} that are not columns of the frame ({names}); fix the names"
        )
    rng = np.random.default_rng(config.seed)
    total = len(frame)
    features: list[FeatureNormalization] = []
    for name, column in zip(names, frame.columns, strict=True):
        values = _present_values(name, frame[column])
        stats = _stats(values, total)
        sample = (
            values
            if values.size <= config.max_sample
            else rng.choice(values, config.max_sample, replace=False)
        )
        forced = config.overrides.get(name)
        if forced is not None:
            kind, parameters = forced, _fit_forced(name, forced, sample, config)
        elif sample.size == 0:
            raise NormalizationFitError(
                f"feature {name!r} has no present values in {total} rows (all NaN/inf); drop the column or "
                "force a type with NormalizationConfig.overrides (it then gets neutral parameters)",
                feature=name,
            )
        else:
            kind, parameters = _identify(sample, config)
        features.append(
            FeatureNormalization(name=name, feature_type=kind, parameters=parameters, stats=stats)
        )
    return NormalizationSpec.create(features, data_range=data_range or DataRange(rows=total))


def frame_from_feature_maps(feature_maps: list[Mapping[str, float | None]]) -> pd.DataFrame:
    """One float column per feature (sorted by name) from dicts such as timeline `state_features`."""
    frame = pd.DataFrame.from_records([dict(m) for m in feature_maps])
    frame = frame.reindex(columns=sorted(frame.columns)).astype(np.float64)
    return frame
