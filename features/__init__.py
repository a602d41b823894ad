"""features stage: normalization specs (fit, publish, diff, report, apply in numpy/torch) and the Feast store.

Torch (`NormalizationModule`) and Feast entry points are imported lazily on first use:
`import feast` costs 10-20 s and torch ~3 s, and numpy-only users must not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from features.drift import population_stability
from features.identify import (
    FeatureOverride,
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
from features.versioning import (
    PublishedSpec,
    SpecChangeBlockedError,
    acknowledge_spec,
    latest_spec,
    publish_spec,
)

_LAZY = {
    "NormalizationModule": "features.module",
    "FeastReaderConfig": "features.store",
    "FeatureStoreConfig": "features.store",
    "RedisReaderConfig": "features.store",
    "FeatureViewStatus": "features.online",
    "RedisOnlineFeatureReader": "features.online",
    "feature_view_status": "features.online",
    "open_online_reader": "features.online",
    "fit_normalization_spark": "features.identify_spark",
    "spark_feature_columns": "features.identify_spark",
    "write_feature_report": "features.report",
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
    "FeatureOverride",
    "FeatureStats",
    "FeatureType",
    "NormalizationConfig",
    "NormalizationFitError",
    "NormalizationParameters",
    "NormalizationSpec",
    "PublishedSpec",
    "SpecChangeBlockedError",
    "SpecDiff",
    "SpecError",
    "acknowledge_spec",
    "build_feature_matrix",
    "diff_specs",
    "fit_normalization",
    "frame_from_feature_maps",
    "latest_spec",
    "load_spec",
    "normalize",
    "population_stability",
    "publish_spec",
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
