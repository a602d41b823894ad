"""hold_out_mdps: whole MDPs held out, disjoint from training, stable across calls."""

from __future__ import annotations

import pandas as pd
import pytest

from evaluation import EvaluationError, hold_out_mdps


def _rows(day: str, users: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "mdp_id": [f"user-{u}:{day}" for u in range(users) for _ in range(4)],
            "sequence_number_ordinal": [s for _ in range(users) for s in range(1, 5)],
        }
    )


def test_held_out_mdps_are_whole_disjoint_and_stable() -> None:
    today = _rows("day1", 1000)
    training = pd.concat([_rows("day0", 1000), today], ignore_index=True)
    train, held = hold_out_mdps(training, today, fraction=0.5, seed=0)
    held_ids = set(held["mdp_id"])
    assert 400 < len(held_ids) < 600
    assert held.groupby("mdp_id").size().eq(4).all()  # every step of a held-out MDP
    assert held_ids.isdisjoint(train["mdp_id"])
    assert len(train) == len(training) - len(held)
    again_train, again_held = hold_out_mdps(training, today, fraction=0.5, seed=0)
    assert again_held.equals(held) and again_train.equals(train)
    assert set(hold_out_mdps(training, today, 0.5, seed=1)[1]["mdp_id"]) != held_ids


def test_zero_fraction_disables_and_impossible_split_raises() -> None:
    today = _rows("day1", 10)
    assert hold_out_mdps(today, today, 0.0)[1] is today
    with pytest.raises(EvaluationError, match="hold-out fraction must be in \\[0, 1\\)"):
        hold_out_mdps(today, today, 1.0)
    with pytest.raises(EvaluationError, match="selected none"):
        hold_out_mdps(today.head(4), today.head(4), 0.001)
