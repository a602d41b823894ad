"""A 1-D continuous bandit with a known optimal action, logged as continuous-action timelines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import NormalizationSpec, fit_normalization, frame_from_feature_maps

ACTION_LOW, ACTION_HIGH = [-2.0], [2.0]
SLOPE = 1.5


def optimal_action(x: np.ndarray) -> np.ndarray:
    """argmax_a E[r | x, a] for reward −(a − 1.5·x)²: a* = 1.5·x, inside [−2, 2] for x in [−1, 1]."""
    return SLOPE * np.asarray(x)


def make_continuous_bandit_timelines(n: int, seed: int = 0) -> pd.DataFrame:
    """One-step MDPs: x ~ U(−1, 1), logged action uniform on [−2, 2], reward −(a − 1.5x)² + noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    a = rng.uniform(ACTION_LOW[0], ACTION_HIGH[0], n)
    reward = -((a - optimal_action(x)) ** 2) + rng.normal(0.0, 0.1, n)
    return pd.DataFrame(
        {
            "mdp_id": [f"mdp-{i}" for i in range(n)],
            "sequence_number": np.zeros(n, np.int64),
            "state_features": [{"x": float(v)} for v in x],
            "action_vector": [[float(v)] for v in a],
            "reward": reward,
            "next_state_features": [{} for _ in range(n)],
            "not_terminal": np.zeros(n, bool),
        }
    )


def fit_spec(timelines: pd.DataFrame) -> NormalizationSpec:
    return fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
