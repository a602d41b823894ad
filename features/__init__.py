"""features stage: normalization specs (fit, save, diff, apply in numpy/torch) and the Feast store.

Torch (`NormalizationModule`) and Feast entry points are imported lazily on first use:
`import feast` costs 10-20 s and torch ~3 s, and numpy-only users must not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from features.identify import (
    NormalizationConfig,
    NormalizationFitError,
    fit_normalization,
    frame_from_feature_maps,
)
from features.spec import (
    DataRange,
    FeatureNormalization,
    FeatureStats,
    FeatureType,
    NormalizationParameters,
    NormalizationSpec,
    SpecDiff,
    SpecError,
    diff_specs,
    load_spec,
    save_spec,
)
from features.transform import build_feature_matrix, normalize

_LAZY = {
    "NormalizationModule": "features.module",
    "FeatureStoreConfig": "features.store",
    "FeatureStoreError": "features.store",
    "OnlineFeatureReader": "features.store",
    "build_feature_store": "features.store",
    "get_training_features": "features.store",
    "open_feature_store": "features.store",
    "push_context_features": "features.store",
    "IngestStats": "features.ingest",
    "run_online_ingest": "features.ingest",
}

__all__ = [
    "DataRange",
    "FeatureNormalization",
    "FeatureStats",
    "FeatureType",
    "NormalizationConfig",
    "NormalizationFitError",
    "NormalizationParameters",
    "NormalizationSpec",
    "SpecDiff",
    "SpecError",
    "build_feature_matrix",
    "diff_specs",
    "fit_normalization",
    "frame_from_feature_maps",
    "load_spec",
    "normalize",
    "save_spec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
