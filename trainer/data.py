"""Timelines (one row per MDP step, see docs/architecture.md) → training tensors.

Features stay raw with NaN for missing: the model normalizes inside its own graph, so
training and serving run the same normalization code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from features import build_feature_matrix
from trainer.errors import TrainingDataError

REQUIRED_COLUMNS = (
    "mdp_id",
    "sequence_number",
    "state_features",
    "action",
    "reward",
    "next_state_features",
    "possible_actions",
    "possible_next_actions",
    "not_terminal",
)

_MAX_ROWS_NAMED = 5


@dataclass(frozen=True, slots=True)
class TransitionTensors:
    """One tensor per timeline column the DQN update needs; row i is one logged step."""

    states: torch.Tensor  # float32 [N, F] raw, NaN = missing
    next_states: torch.Tensor  # float32 [N, F]
    actions: torch.Tensor  # int64 [N] index into `actions`
    rewards: torch.Tensor  # float32 [N] (clipped if configured)
    not_terminal: torch.Tensor  # float32 [N] 1 = a next step exists
    possible_mask: torch.Tensor  # float32 [N, A]
    possible_next_mask: torch.Tensor  # float32 [N, A]; all 0 on terminal rows
    mc_returns: torch.Tensor  # float32 [N] discounted logged return from this step to the MDP's end
    discounts: torch.Tensor  # float32 [N] factor on the bootstrapped next value: γ, or γ^m for n-step

    @property
    def n_rows(self) -> int:
        return int(self.actions.shape[0])


def feature_maps(values: Iterable[Any]) -> list[dict[str, float]]:
    """Accept dicts or Arrow map values (lists of key/value pairs); drop None (= missing)."""
    maps: list[dict[str, float]] = []
    for value in values:
        if value is None:
            maps.append({})
            continue
        items = value.items() if isinstance(value, Mapping) else value
        maps.append({str(k): float(v) for k, v in items if v is not None})
    return maps


def build_possible_mask(
    possible_lists: Iterable[Iterable[str] | None], actions: Sequence[str]
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Return the float32 [N, A] mask and, per action not in `actions`, the rows that named it."""
    index = {name: i for i, name in enumerate(actions)}
    lists = list(possible_lists)
    mask = np.zeros((len(lists), len(actions)), dtype=np.float32)
    unknown: dict[str, list[int]] = {}
    for row, names in enumerate(lists):
        for name in [] if names is None else names:
            col = index.get(name)
            if col is None:
                unknown.setdefault(str(name), []).append(row)
            else:
                mask[row, col] = 1.0
    return mask, unknown


def discounted_returns(timelines: pd.DataFrame, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ·G_{t+1} within each MDP, steps ordered by sequence_number."""
    returns = np.zeros(len(timelines), dtype=np.float64)
    order = timelines.reset_index(drop=True).sort_values(["mdp_id", "sequence_number"], kind="stable")
    for _, group in order.groupby("mdp_id", sort=False):
        running = 0.0
        for pos in group.index[::-1]:
            running = float(rewards[pos]) + gamma * running
            returns[pos] = running
    return returns


def build_transitions(
    timelines: pd.DataFrame,
    feature_names: Sequence[str],
    actions: Sequence[str],
    gamma: float,
    reward_clip: float | None = None,
) -> TransitionTensors:
    """Validate the timelines and build the tensors; every problem names the rows to look at."""
    _check_columns(timelines)
    if len(timelines) == 0:
        raise TrainingDataError("timelines are empty; nothing to train on (check the date range loaded)")
    if len(set(actions)) != len(actions) or not actions:
        raise TrainingDataError(f"actions must be a non-empty list without duplicates, got {list(actions)}")
    frame = timelines.reset_index(drop=True)

    logged = frame["action"].astype(str).tolist()
    action_index = {name: i for i, name in enumerate(actions)}
    unknown_logged: dict[str, list[int]] = {}
    for row, name in enumerate(logged):
        if name not in action_index:
            unknown_logged.setdefault(name, []).append(row)
    _raise_unknown(unknown_logged, "action", frame, actions)

    mask, unknown = build_possible_mask(frame["possible_actions"], actions)
    _raise_unknown(unknown, "possible_actions", frame, actions)
    next_mask, unknown = build_possible_mask(frame["possible_next_actions"], actions)
    _raise_unknown(unknown, "possible_next_actions", frame, actions)

    action_idx = np.array([action_index[name] for name in logged], dtype=np.int64)
    not_possible = np.flatnonzero(mask[np.arange(len(frame)), action_idx] == 0)
    if len(not_possible):
        raise TrainingDataError(
            f"logged action is not among possible_actions in rows {describe_rows(frame, not_possible)}; "
            "fix the logging app or drop these rows",
            column="possible_actions",
            rows=not_possible.tolist(),
        )

    rewards = checked_rewards(frame, reward_clip)

    not_terminal = frame["not_terminal"].to_numpy(dtype=bool)
    no_next = np.flatnonzero(not_terminal & (next_mask.sum(axis=1) == 0))
    if len(no_next):
        raise TrainingDataError(
            f"non-terminal rows {describe_rows(frame, no_next)} have no possible_next_actions; "
            "a step with a successor needs at least one possible next action",
            column="possible_next_actions",
            rows=no_next.tolist(),
        )
    next_mask[~not_terminal] = 0.0

    states = build_feature_matrix(feature_maps(frame["state_features"]), list(feature_names))
    next_states = build_feature_matrix(feature_maps(frame["next_state_features"]), list(feature_names))
    returns = discounted_returns(frame, rewards, gamma)
    return TransitionTensors(
        states=torch.as_tensor(np.asarray(states, dtype=np.float32)),
        next_states=torch.as_tensor(np.asarray(next_states, dtype=np.float32)),
        actions=torch.as_tensor(action_idx),
        rewards=torch.as_tensor(rewards.astype(np.float32)),
        not_terminal=torch.as_tensor(not_terminal.astype(np.float32)),
        possible_mask=torch.as_tensor(mask),
        possible_next_mask=torch.as_tensor(next_mask),
        mc_returns=torch.as_tensor(returns.astype(np.float32)),
        discounts=torch.full((len(frame),), gamma, dtype=torch.float32),
    )


def _check_columns(timelines: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in timelines.columns]
    if missing:
        raise TrainingDataError(
            f"timelines lack columns {missing} (have {sorted(timelines.columns)}); "
            "load them with stream.load_timelines",
            column=missing[0],
        )


def checked_rewards(frame: pd.DataFrame, reward_clip: float | None) -> np.ndarray:
    """The `reward` column as float64, clipped to ±`reward_clip`; a non-finite reward names its rows."""
    rewards = frame["reward"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(rewards))
    if len(bad):
        raise TrainingDataError(
            f"reward is not finite in rows {describe_rows(frame, bad)}; rewards must be real numbers",
            column="reward",
            rows=bad.tolist(),
        )
    return rewards if reward_clip is None else np.clip(rewards, -reward_clip, reward_clip)


def describe_rows(frame: pd.DataFrame, rows: Sequence[int] | np.ndarray) -> str:
    """Row numbers with their mdp_id and sequence number, for error messages (first few only)."""
    rows = list(rows)
    named = ", ".join(
        f"{int(r)} (mdp_id={frame.at[int(r), 'mdp_id']!r}, seq={frame.at[int(r), 'sequence_number']})"
        for r in rows[:_MAX_ROWS_NAMED]
    )
    more = f" and {len(rows) - _MAX_ROWS_NAMED} more" if len(rows) > _MAX_ROWS_NAMED else ""
    return f"[{named}{more}]"


def _raise_unknown(
    unknown: dict[str, list[int]], column: str, frame: pd.DataFrame, actions: Sequence[str]
) -> None:
    if not unknown:
        return
    name, rows = next(iter(unknown.items()))
    others = f" (also unknown: {sorted(unknown)[:5]})" if len(unknown) > 1 else ""
    raise TrainingDataError(
        f"{column} {name!r} in {len(rows)} row(s) {describe_rows(frame, rows)} is not one of the model's "
        f"actions {list(actions)}{others}; add it to `actions` or filter these rows out",
        column=column,
        rows=[r for rs in unknown.values() for r in rs],
    )
