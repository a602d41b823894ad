"""Identify each feature's type from a sample of its values and fit its parameters.

Rules, in order, on the present (finite) values of a sample (Horizon's, see REFERENCE §2):
  1. all values in {0, 1}, or a single distinct value          → BINARY
  2. all values in [0, 1]                                        → PROBABILITY (logit, clamped)
  3. non-negative integers with ≤ `max_enum_values` distinct    → ENUM (one-hot)
  4. otherwise CONTINUOUS, refined when `identify_boxcox_quantile`:
     - fewer than `min_samples_for_refinement` values or range < 1e-4 → plain CONTINUOUS
     - BOXCOX if the fitted λ is outside [0.9, 1.1], the D'Agostino K² of the raw values is
       > 10× that of the transformed values and the transformed K² ≤ 1000 — and (our addition)
       the raw K² > `boxcox_min_k2`, so a normal feature does not flip to BOXCOX on sampling noise
     - else QUANTILE if the raw K² > 1000
     - else CONTINUOUS: standardize with mean and stddev; a stddev < `min_stddev` becomes 1.0
       (no scaling) so near-constant features do not explode.
Config-driven: `action_features` → CONTINUOUS_ACTION ([min, max] → (-1, 1)); `overrides` force a type
(CLIP_LOG, DO_NOT_PREPROCESS or any identified type), optionally with its parameters.
NaN and ±inf count as missing. A feature with no present values raises `NormalizationFitError`
unless it has an override or `all_missing: neutral`; then it gets neutral parameters.
Every entry records `reason`: why its type was chosen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts import StreamrlError
from features.spec import (
    DataRange,
    FeatureNormalization,
    FeatureStats,
    FeatureType,
    NormalizationParameters,
    NormalizationSpec,
)

__all__ = [
    "FeatureOverride",
    "NormalizationConfig",
    "NormalizationFitError",
    "fit_feature",
    "fit_normalization",
    "frame_from_feature_maps",
]

BOXCOX_MARGIN = 1e-4


class NormalizationFitError(StreamrlError):
    """The input to `fit_normalization` cannot be fitted (wrong dtype, no values, bad override)."""

    def __init__(self, message: str, *, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class FeatureOverride(BaseModel):
    """A forced type for one feature; with `parameters` they are used verbatim instead of fitted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_type: FeatureType
    parameters: NormalizationParameters | None = None


class NormalizationConfig(BaseModel):
    """How features are identified, what is forced, and when a changed spec must be acknowledged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    max_sample: int = Field(100_000, gt=0, description="values per feature used for identification")
    max_enum_values: int = Field(10, ge=2)
    quantile_count: int = Field(20, ge=2, description="number of quantile intervals for QUANTILE")
    identify_boxcox_quantile: bool = True
    min_samples_for_refinement: int = Field(20, ge=8)
    min_stddev: float = Field(1e-4, gt=0)
    boxcox_min_k2: float = Field(
        20.0,
        ge=0,
        description="Box-Cox only for clearly non-normal values (raw K² above this; K² ~ χ²(2) when "
        "normal, so 20 means p < 5e-5): keeps normal features from flipping to BOXCOX between nights",
    )
    overrides: dict[str, FeatureType | FeatureOverride] = Field(
        default_factory=dict, description="feature → forced type, or {feature_type, parameters}"
    )
    action_features: list[str] = Field(
        default_factory=list, description="continuous-control action features → CONTINUOUS_ACTION"
    )
    all_missing: Literal["error", "neutral"] = Field(
        "error",
        description="a feature with no present value: raise, or give it neutral CONTINUOUS parameters "
        "(every input is then missing: value 0, mask 0)",
    )
    block_on_type_change: bool = Field(
        False,
        description="hold a new spec that changes a feature's type, adds, removes or reorders features until "
        "`streamrl features ack`; false: publish it and show the change in the spec diff and report",
    )
    block_on_parameter_shift: bool = Field(
        False, description="refuse a new spec whose parameters shift a lot"
    )
    shift_threshold: float = Field(0.5, gt=0, description="what counts as a large shift (see diff_specs)")
    report: bool = Field(True, description="write the HTML feature report next to each published spec")
    seed: int = 0

    @model_validator(mode="after")
    def _action_features_not_overridden(self) -> NormalizationConfig:
        both = sorted(set(self.action_features).intersection(self.overrides))
        if both:
            raise ValueError(f"features {both} are both action_features and overrides; keep one")
        return self

    def override(self, name: str) -> FeatureOverride | None:
        forced = self.overrides.get(name)
        if forced is None and name in self.action_features:
            return FeatureOverride(feature_type=FeatureType.CONTINUOUS_ACTION)
        if isinstance(forced, str):  # FeatureType (a StrEnum), or a plain name via model_copy
            return FeatureOverride(feature_type=FeatureType(forced))
        return forced

    def check_names(self, names: list[str]) -> None:
        """Every feature the config names must exist: a typo must not silently un-force a type."""
        unknown = sorted((set(self.overrides) | set(self.action_features)) - set(names))
        if unknown:
            raise NormalizationFitError(
                f"normalization config names features {unknown} (overrides/action_features) that are not "
                f"in the data ({names}); fix the names or remove them from the config"
            )


def numeric_values(name: str, column: pd.Series) -> np.ndarray:
    """A feature column as float64 (NaN = missing); text mixed in is an error naming examples."""
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    if not pd.api.types.is_object_dtype(column):
        raise NormalizationFitError(
            f"feature column {name!r} has dtype {column.dtype}, expected a numeric dtype "
            "(one float column per feature, NaN for missing); convert it or drop it before fitting",
            feature=name,
        )
    converted = pd.to_numeric(column, errors="coerce")
    bad = column[converted.isna() & column.notna()]
    if len(bad):
        examples = ", ".join(repr(v) for v in bad.unique()[:3])
        if len(bad) == int(column.notna().sum()):
            raise NormalizationFitError(
                f"feature column {name!r} has dtype {column.dtype} and none of its values are numbers "
                f"(e.g. {examples}); expected one float column per feature — encode it or drop it",
                feature=name,
            )
        raise NormalizationFitError(
            f"feature {name!r} mixes numbers and non-numbers: {len(bad)} of {len(column)} values are not "
            f"numbers (e.g. {examples}); expected one float per row (None/NaN for missing) — fix the "
            "producer or drop the feature",
            feature=name,
        )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _stats(values: np.ndarray, total: int) -> FeatureStats:
    if values.size == 0:
        return FeatureStats(count=0, missing_share=1.0 if total else 0.0)
    with np.errstate(over="ignore", invalid="ignore"):  # heavy tails (e.g. Cauchy) overflow: None
        mean, std = float(values.mean()), float(values.std())
    return FeatureStats(
        count=int(values.size),
        missing_share=float(1.0 - values.size / total) if total else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        mean=mean if math.isfinite(mean) else None,
        std=std if math.isfinite(std) else None,
    )


def _with_bins(stats: FeatureStats, sample: np.ndarray) -> FeatureStats:
    """Decile cut points of the sample and the share of values per bin (what PSI compares later)."""
    if sample.size == 0:
        return stats
    edges = np.unique(np.quantile(sample, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, sample, side="left"), minlength=edges.size + 1)
    return stats.model_copy(
        update={
            "bin_edges": [float(e) for e in edges],
            "bin_shares": [float(c) for c in counts / sample.size],
        }
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


Identified = tuple[FeatureType, NormalizationParameters, str]


def _refine_continuous(values: np.ndarray, config: NormalizationConfig) -> Identified:
    """CONTINUOUS, or BOXCOX/QUANTILE when the values are far from normal (REFERENCE §2)."""
    if not config.identify_boxcox_quantile:
        return (
            FeatureType.CONTINUOUS,
            _continuous(values, config),
            "continuous (Box-Cox/quantile refinement off)",
        )
    if values.size < config.min_samples_for_refinement:
        why = (
            f"continuous: only {values.size} values (< {config.min_samples_for_refinement}) to test normality"
        )
        return FeatureType.CONTINUOUS, _continuous(values, config), why
    if float(values.max() - values.min()) < 1e-4:
        return FeatureType.CONTINUOUS, _continuous(values, config), "continuous: value range < 1e-4"
    k2_raw = _k2(values)
    boxcox = _boxcox(values, config)
    lam = boxcox.boxcox_lambda
    k2_transformed = math.nan
    if k2_raw > config.boxcox_min_k2 and lam is not None and not (0.9 <= lam <= 1.1) and math.isfinite(lam):
        shifted = values + boxcox.boxcox_shift
        transformed = np.log(shifted) if lam == 0 else (np.power(shifted, lam) - 1.0) / lam
        k2_transformed = _k2(transformed)
        if k2_raw > 10.0 * k2_transformed and k2_transformed <= 1000.0:
            why = (
                f"skewed: D'Agostino K² {k2_raw:.4g} → {k2_transformed:.4g} after Box-Cox λ={lam:.3g} "
                "(> 10× better)"
            )
            return FeatureType.BOXCOX, boxcox, why
    if k2_raw > 1000.0:
        quantile = _quantile(values, config)
        if quantile is not None:
            why = (
                f"very non-normal: K² {k2_raw:.4g} > 1000 and Box-Cox (λ={lam:.3g}) did not fix it; "
                f"{len(quantile.quantiles or []) - 1} quantile intervals"
            )
            return FeatureType.QUANTILE, quantile, why
    why = f"roughly normal: K² {k2_raw:.4g}; standardized with mean and stddev"
    return FeatureType.CONTINUOUS, _continuous(values, config), why


def _identify(values: np.ndarray, config: NormalizationConfig) -> Identified:
    distinct = np.unique(values)
    if distinct.size <= 1:
        why = f"constant: every present value is {distinct[0]:.6g}; kept as BINARY (it carries presence only)"
        return FeatureType.BINARY, NormalizationParameters(), why
    if np.all((distinct == 0.0) | (distinct == 1.0)):
        return FeatureType.BINARY, NormalizationParameters(), "all values are 0 or 1"
    if distinct.min() >= 0.0 and distinct.max() <= 1.0:
        why = f"all values in [0, 1] (min {distinct.min():.4g}, max {distinct.max():.4g}); logit"
        return FeatureType.PROBABILITY, NormalizationParameters(), why
    if (
        distinct.min() >= 0.0
        and np.all(distinct == np.floor(distinct))
        and distinct.size <= config.max_enum_values
    ):
        why = f"{distinct.size} distinct non-negative integers (≤ {config.max_enum_values}); one-hot"
        return FeatureType.ENUM, NormalizationParameters(possible_values=[float(v) for v in distinct]), why
    return _refine_continuous(values, config)


def _fit_forced(
    name: str, kind: FeatureType, values: np.ndarray, stats: FeatureStats, config: NormalizationConfig
) -> NormalizationParameters:
    """Parameters for a type forced by an override; neutral ones when there are no values."""
    empty = values.size == 0
    if kind in (
        FeatureType.BINARY,
        FeatureType.PROBABILITY,
        FeatureType.DO_NOT_PREPROCESS,
        FeatureType.CLIP_LOG,
    ):
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
        # The full data's range (not the sample's): an action outside it would be clipped.
        if stats.min is None or stats.max is None or not stats.max > stats.min:
            raise NormalizationFitError(
                f"feature {name!r} is a CONTINUOUS_ACTION but has no value range to map to (-1, 1) "
                f"(min {stats.min}, max {stats.max}); give its range as forced parameters "
                f"(overrides: {{{name}: {{feature_type: continuous_action, parameters: {{min_value, max_value}}}}}})",
                feature=name,
            )
        return NormalizationParameters(min_value=stats.min, max_value=stats.max)
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


def fit_feature(
    name: str, sample: np.ndarray, stats: FeatureStats, config: NormalizationConfig
) -> FeatureNormalization:
    """One feature's entry from a sorted sample of its present values and its full-data stats.

    Shared by the in-process and the Spark path, so the same sample gives the same entry.
    """
    stats = _with_bins(stats, sample)
    forced = config.override(name)
    if forced is not None and forced.parameters is not None:
        kind, parameters, why = forced.feature_type, forced.parameters, "type and parameters forced by config"
    elif forced is not None:
        kind, why = forced.feature_type, "type forced by config"
        if forced.feature_type is FeatureType.CONTINUOUS_ACTION and name in config.action_features:
            why = f"action feature: [{stats.min:.6g}, {stats.max:.6g}] → (-1, 1)"
        parameters = _fit_forced(name, kind, sample, stats, config)
    elif sample.size == 0:
        if config.all_missing == "error":
            raise NormalizationFitError(
                f"feature {name!r} has no present values (all NaN/inf/missing); drop the feature, force a "
                "type with NormalizationConfig.overrides, or set all_missing: neutral",
                feature=name,
            )
        kind, parameters = FeatureType.CONTINUOUS, NormalizationParameters()
        why = "no present value in the fit window: neutral parameters (all_missing: neutral)"
    else:
        kind, parameters, why = _identify(sample, config)
    try:
        return FeatureNormalization(
            name=name, feature_type=kind, parameters=parameters, stats=stats, reason=why
        )
    except ValidationError as exc:
        raise NormalizationFitError(
            f"feature {name!r}: forced parameters do not fit type {kind.value}: {exc.errors()[0]['msg']}",
            feature=name,
        ) from exc


def fit_normalization(
    frame: pd.DataFrame,
    config: NormalizationConfig | None = None,
    data_range: DataRange | None = None,
) -> NormalizationSpec:
    """Fit a spec with one entry per column of `frame` (in column order); NaN/±inf = missing.

    In-process, for data that fits in memory; `fit_normalization_spark` gives the same spec on Spark.
    """
    config = config or NormalizationConfig()
    if frame.shape[1] == 0:
        raise NormalizationFitError("fit_normalization got a frame with no feature columns")
    names = [str(c) for c in frame.columns]
    config.check_names(names)
    rng = np.random.default_rng(config.seed)
    total = len(frame)
    features: list[FeatureNormalization] = []
    for name, column in zip(names, frame.columns, strict=True):
        values = numeric_values(name, frame[column])
        values = values[np.isfinite(values)]
        sample = (
            values
            if values.size <= config.max_sample
            else rng.choice(values, config.max_sample, replace=False)
        )
        features.append(fit_feature(name, np.sort(sample), _stats(values, total), config))
    return NormalizationSpec.create(features, data_range=data_range or DataRange(rows=total))


def frame_from_feature_maps(feature_maps: list[Mapping[str, float | None]]) -> pd.DataFrame:
    """One float column per feature (sorted by name) from dicts such as timeline `state_features`."""
    frame = pd.DataFrame.from_records([dict(m) for m in feature_maps])
    frame = frame.reindex(columns=sorted(frame.columns))
    try:
        return frame.astype(np.float64)
    except (TypeError, ValueError):  # say which feature holds text, and examples of it
        return pd.DataFrame({name: numeric_values(name, frame[name]) for name in frame.columns})
