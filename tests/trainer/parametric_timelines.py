"""Toy parametric-action timelines: users, 2–5 items on offer per step, value = user · item."""

from __future__ import annotations

import numpy as np
import pandas as pd


def user_features(rng: np.random.Generator) -> dict[str, float]:
    return {"u0": float(rng.normal()), "u1": float(rng.normal())}


def item_offers(rng: np.random.Generator) -> list[dict[str, float]]:
    """2..5 items; an item's value to a user is u·(x0, x1); price is noise the model must ignore."""
    return [
        {"x0": float(rng.normal()), "x1": float(rng.normal()), "price": float(rng.uniform(1, 10))}
        for _ in range(int(rng.integers(2, 6)))
    ]


def item_value(user: dict[str, float], item: dict[str, float]) -> float:
    return user["u0"] * item["x0"] + user["u1"] * item["x1"]


def toy_timelines(n_mdps: int, seed: int) -> pd.DataFrame:
    """Two-step MDPs, logged uniformly at random over the candidates on offer."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_mdps):
        steps = [(user_features(rng), item_offers(rng)) for _ in range(2)]
        for s, (user, items) in enumerate(steps):
            pick = int(rng.integers(len(items)))
            last = s == len(steps) - 1
            rows.append(
                {
                    "mdp_id": f"m{m}",
                    "sequence_number": s,
                    "state_features": user,
                    "action": f"item{pick}",
                    "action_features": items[pick],
                    "possible_action_features": items,
                    "reward": item_value(user, items[pick]) + 0.1 * float(rng.normal()),
                    "next_state_features": {} if last else steps[s + 1][0],
                    "possible_next_action_features": [] if last else steps[s + 1][1],
                    "not_terminal": not last,
                }
            )
    return pd.DataFrame(rows)
