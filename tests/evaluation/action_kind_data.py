"""Logged timelines of parametric and continuous actions with a reward whose expectation is known.

Continuous: x ~ U(−1, 1), logged action uniform on [−2, 2] (log density −log 4), E[r | x, a] =
3 − (a − 1.5x)². Parametric: users u ∈ R², 2–5 items per step with features (x0, x1, price),
logged uniformly over the items on offer (propensity 1/K), E[r | u, item] = 2 + u·(x0, x1).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from contracts.actions import (
    ACTION_FEATURES_COLUMN,
    ACTION_LOG_DENSITY_COLUMN,
    ACTION_VECTOR_COLUMN,
    POSSIBLE_ACTION_FEATURES_COLUMN,
    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
)

ACTION_LOW, ACTION_HIGH = -2.0, 2.0
SLOPE = 1.5
CONTINUOUS_OFFSET = 3.0
PARAMETRIC_OFFSET = 2.0


def continuous_expected_reward(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    return CONTINUOUS_OFFSET - (np.asarray(a) - SLOPE * np.asarray(x)) ** 2


def continuous_timelines(n: int, seed: int, noise: float = 0.1) -> pd.DataFrame:
    """One-step MDPs logged uniformly on [−2, 2], every timeline column the stream writes; rows in
    (mdp_id, step) order, the order evaluation sorts them into."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    a = rng.uniform(ACTION_LOW, ACTION_HIGH, n)
    return pd.DataFrame(
        {
            "mdp_id": [f"c{seed}-{i:06d}" for i in range(n)],
            "sequence_number": np.zeros(n, np.int64),
            "sequence_number_ordinal": np.ones(n, np.int64),
            "state_features": [{"x": float(v)} for v in x],
            "action": None,
            "action_probability": None,
            ACTION_VECTOR_COLUMN: [[float(v)] for v in a],
            ACTION_LOG_DENSITY_COLUMN: np.full(n, -math.log(ACTION_HIGH - ACTION_LOW)),
            "reward": continuous_expected_reward(x, a) + rng.normal(0.0, noise, n),
            "possible_actions": [["a"] for _ in range(n)],
            "model_version": "uniform-v0",
            "next_state_features": [{} for _ in range(n)],
            "not_terminal": np.zeros(n, bool),
        }
    )


def item_value(user: dict[str, float], item: dict[str, float]) -> float:
    return PARAMETRIC_OFFSET + user["u0"] * item["x0"] + user["u1"] * item["x1"]


def parametric_timelines(n_mdps: int, seed: int, steps: int = 2, noise: float = 0.1) -> pd.DataFrame:
    """`steps`-step MDPs, each step offering 2–5 items, one chosen uniformly at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_mdps):
        offers = []
        for _ in range(steps):
            user = {"u0": float(rng.normal()), "u1": float(rng.normal())}
            items = [
                {"x0": float(rng.normal()), "x1": float(rng.normal()), "price": float(rng.uniform(1, 10))}
                for _ in range(int(rng.integers(2, 6)))
            ]
            offers.append((user, items))
        for s, (user, items) in enumerate(offers):
            pick = int(rng.integers(len(items)))
            last = s == steps - 1
            rows.append(
                {
                    "mdp_id": f"p{seed}-{m:06d}",
                    "sequence_number": s,
                    "sequence_number_ordinal": s + 1,
                    "state_features": user,
                    "action": f"item{pick}",
                    "action_probability": 1.0 / len(items),
                    ACTION_FEATURES_COLUMN: items[pick],
                    "possible_actions": [f"item{k}" for k in range(len(items))],
                    POSSIBLE_ACTION_FEATURES_COLUMN: items,
                    "reward": item_value(user, items[pick]) + noise * float(rng.normal()),
                    "model_version": "uniform-v0",
                    "next_state_features": {} if last else offers[s + 1][0],
                    POSSIBLE_NEXT_ACTION_FEATURES_COLUMN: [] if last else offers[s + 1][1],
                    "not_terminal": not last,
                }
            )
    return pd.DataFrame(rows)
