"""Raw feature values → model inputs, identically in numpy (offline) and torch (inside the ONNX graph).

Output layout for a spec with features f1..fF (width `spec.output_dim`):
    [ value columns of f1 | … | value columns of fF | presence mask (F columns) ]
ENUM features contribute one one-hot column per possible value (an unseen value → all zeros);
every other type contributes one column. Value columns are clamped to ±OUTPUT_CLAMP.

Missing: NaN, +inf and -inf inputs are all treated as missing — value columns 0, mask 0.
Any finite input, however large, is present (mask 1) and clamped.

`normalize` is the readable per-feature reference; `features.module.NormalizationModule` computes
the same thing in torch (inside exported models). Both compute in float32 with the same operation
order, so they agree to ~1e-6. This module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from features.spec import (
    ACTION_EPS,
    BOXCOX_MIN_SHIFTED,
    CLIP_LOG_MIN,
    OUTPUT_CLAMP,
    PROBABILITY_EPS,
    FeatureNormalization,
    FeatureType,
    NormalizationSpec,
)

__all__ = ["build_feature_matrix", "normalize"]

_F32 = np.float32


def build_feature_matrix(
    feature_maps: Sequence[Mapping[str, float | None]], feature_names: Sequence[str]
) -> np.ndarray:
    """Dense float32 [N, F] in `feature_names` order; absent keys and None become NaN, unknown keys are ignored."""
    matrix = np.full((len(feature_maps), len(feature_names)), np.nan, dtype=_F32)
    column = {name: j for j, name in enumerate(feature_names)}
    for i, row in enumerate(feature_maps):
        for name, value in row.items():
            j = column.get(name)
            if j is not None and value is not None:
                matrix[i, j] = value
    return matrix


def _transform_present(feature: FeatureNormalization, x: np.ndarray) -> np.ndarray:
    """Value column(s) [N, width] for one feature; `x` has missing entries already replaced by 0."""
    p = feature.parameters
    kind = feature.feature_type
    if kind is FeatureType.BINARY:
        y = (x != 0).astype(_F32)
    elif kind is FeatureType.PROBABILITY:
        c = np.clip(x, _F32(PROBABILITY_EPS), _F32(1.0 - PROBABILITY_EPS))
        y = np.log(c) - np.log(_F32(1.0) - c)
    elif kind is FeatureType.CONTINUOUS:
        y = (x - _F32(p.mean)) / _F32(p.stddev)
    elif kind is FeatureType.BOXCOX:
        shifted = np.maximum(x + _F32(p.boxcox_shift), _F32(BOXCOX_MIN_SHIFTED))
        lam = float(p.boxcox_lambda)
        bc = np.log(shifted) if lam == 0.0 else (np.power(shifted, _F32(lam)) - _F32(1.0)) / _F32(lam)
        y = (bc - _F32(p.mean)) / _F32(p.stddev)
    elif kind is FeatureType.QUANTILE:
        q = np.asarray(p.quantiles, dtype=_F32)
        lo, width = q[:-1], q[1:] - q[:-1]
        segments = np.clip((x[:, None] - lo[None, :]) / width[None, :], _F32(0.0), _F32(1.0))
        y = segments.sum(axis=1, dtype=_F32) * _F32(1.0 / (len(q) - 1))
    elif kind is FeatureType.CONTINUOUS_ACTION:
        lo, hi = _F32(p.min_value), _F32(p.max_value)
        y = (x - lo) / (hi - lo) * _F32(2.0 - 2.0 * ACTION_EPS) + _F32(-1.0 + ACTION_EPS)
        y = np.clip(y, _F32(-1.0 + ACTION_EPS), _F32(1.0 - ACTION_EPS))
    elif kind is FeatureType.DO_NOT_PREPROCESS:
        y = x
    elif kind is FeatureType.CLIP_LOG:
        y = np.log(np.maximum(x, _F32(CLIP_LOG_MIN)))
    elif kind is FeatureType.ENUM:
        values = np.asarray(p.possible_values, dtype=_F32)
        return (x[:, None] == values[None, :]).astype(_F32)
    else:  # pragma: no cover - the enum is exhaustive
        raise AssertionError(kind)
    return y.astype(_F32)[:, None]


def normalize(spec: NormalizationSpec, raw: np.ndarray) -> np.ndarray:
    """Normalize raw values [N, F] (columns in `spec.feature_names` order) to float32 [N, spec.output_dim]."""
    raw = np.asarray(raw, dtype=_F32)
    if raw.ndim != 2 or raw.shape[1] != spec.n_features:
        raise ValueError(
            f"normalize expects raw values of shape [N, {spec.n_features}] in the order {spec.feature_names} "
            f"(spec {spec.version}), got shape {raw.shape}"
        )
    present = np.isfinite(raw)
    safe = np.where(present, raw, _F32(0.0))
    blocks = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for j, feature in enumerate(spec.features):
            y = _transform_present(feature, safe[:, j])
            y = np.clip(y, _F32(-OUTPUT_CLAMP), _F32(OUTPUT_CLAMP))
            blocks.append(np.where(present[:, j : j + 1], y, _F32(0.0)))
    blocks.append(present.astype(_F32))
    return np.concatenate(blocks, axis=1).astype(_F32)
