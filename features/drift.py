"""Population stability index (PSI) of a feature against the distribution a previous spec saw.

Each spec stores, per feature, decile cut points of its fit sample and the share of values per
bin (`FeatureStats.bin_edges/bin_shares`). New values are binned on the *previous* cut points and
the shares compared: PSI = Σ (new − old) · ln(new / old). Rule of thumb: < 0.1 stable,
0.1–0.25 moderate shift, > 0.25 major shift.
"""

from __future__ import annotations

import numpy as np

from features.spec import FeatureStats

__all__ = ["PSI_MAJOR", "PSI_MODERATE", "drift_level", "population_stability"]

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
_FLOOR = 1e-4  # an empty bin would make ln(0): floor shares as is customary


def population_stability(previous: FeatureStats | None, values: np.ndarray) -> float | None:
    """PSI of `values` (present values only) against `previous`; None when either side has no data."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if previous is None or previous.bin_edges is None or previous.bin_shares is None or values.size == 0:
        return None
    edges = np.asarray(previous.bin_edges, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    new = np.maximum(counts / values.size, _FLOOR)
    old = np.maximum(np.asarray(previous.bin_shares, dtype=np.float64), _FLOOR)
    return float(np.sum((new - old) * np.log(new / old)))


def drift_level(psi: float | None) -> str:
    if psi is None:
        return "n/a"
    if psi < PSI_MODERATE:
        return "stable"
    return "moderate" if psi < PSI_MAJOR else "major"
