"""Builders of small synthetic timelines with known answers (columns as in docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from features import NormalizationSpec, fit_normalization, frame_from_feature_maps

BANDIT_ACTIONS = ["up", "down", "stay"]
TWO_STEP_ACTIONS = ["left", "right", "collect"]
_T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def bandit_expected_reward(x1: np.ndarray) -> np.ndarray:
    """E[r | x, a] for BANDIT_ACTIONS: up → x1, down → −x1, stay → 0.2 (x2 is noise)."""
    x1 = np.asarray(x1, dtype=np.float64)
    return np.stack([x1, -x1, np.full_like(x1, 0.2)], axis=1)


def _row(
    mdp_id: str, seq: int, features: dict, action: str, reward: float, possible: list[str], **next_step
) -> dict:
    terminal = not next_step
    return {
        "mdp_id": mdp_id,
        "request_id": f"{mdp_id}-{seq}",
        "entity_id": mdp_id.split("-")[0],
        "sequence_number": seq,
        "sequence_number_ordinal": seq + 1,
        "timestamp": pd.Timestamp(_T0 + timedelta(minutes=seq)),
        "ds": "2026-11-23",
        "state_features": features,
        "action": action,
        "action_probability": 1.0 / len(possible),
        "reward": float(reward),
        "reward_observed": True,
        "metrics": {},
        "possible_actions": possible,
        "next_state_features": {} if terminal else next_step["next_state"],
        "next_action": None if terminal else next_step["next_action"],
        "possible_next_actions": [] if terminal else next_step["next_possible"],
        "time_diff": 0 if terminal else 1,
        "time_since_first": seq,
        "not_terminal": not terminal,
        "model_version": "logging-v0",
    }


def make_bandit_timelines(n: int, seed: int, noise: float = 0.1) -> pd.DataFrame:
    """One-step MDPs, uniform logging over all actions; x2 is missing in ~20% of rows."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-1.0, 1.0, n)
    x2 = rng.normal(5.0, 2.0, n)
    actions = rng.integers(0, len(BANDIT_ACTIONS), n)
    rewards = bandit_expected_reward(x1)[np.arange(n), actions] + rng.normal(0.0, noise, n)
    rows = []
    for i in range(n):
        state = {"x1": float(x1[i])} if rng.random() < 0.2 else {"x1": float(x1[i]), "x2": float(x2[i])}
        rows.append(_row(f"u{i}-s{seed}", 0, state, BANDIT_ACTIONS[actions[i]], rewards[i], BANDIT_ACTIONS))
    frame = pd.DataFrame(rows)
    frame["timestamp"] = frame["timestamp"] + pd.to_timedelta(np.arange(n), unit="s")
    return frame


def make_two_step_timelines(n_mdps: int, seed: int) -> pd.DataFrame:
    """At stage 0: `left` pays 1 and ends; `right` pays 0 and leads to stage 1, where `collect` pays 2.

    Q*(s0, right) = 2γ, so `right` is better only when γ > 0.5.
    """
    rng = np.random.default_rng(seed)
    rows = []
    s0_possible, s1_possible = ["left", "right"], ["collect"]
    for i in range(n_mdps):
        mdp = f"e{i}-s{seed}"
        noise = float(rng.normal(0.0, 0.1))
        s0, s1 = {"stage": 0.0, "noise": noise}, {"stage": 1.0, "noise": noise}
        if rng.random() < 0.5:
            rows.append(_row(mdp, 0, s0, "left", 1.0, s0_possible))
        else:
            rows.append(
                _row(
                    mdp,
                    0,
                    s0,
                    "right",
                    0.0,
                    s0_possible,
                    next_state=s1,
                    next_action="collect",
                    next_possible=s1_possible,
                )
            )
            rows.append(_row(mdp, 1, s1, "collect", 2.0, s1_possible))
    return pd.DataFrame(rows)


def fit_spec(timelines: pd.DataFrame) -> NormalizationSpec:
    maps = list(timelines["state_features"]) + [m for m in timelines["next_state_features"] if m]
    return fit_normalization(frame_from_feature_maps(maps))
