"""Timelines with parametric actions → training tensors (and helpers shared with the bandits).

A parametric action is described by a feature map (`{"price": 3.0, "category": 2}`) and the set
of candidates varies per step. Timelines carry three extra columns next to the usual ones:

| column | type | meaning |
| --- | --- | --- |
| action_features | dict[str, float] | the logged (chosen) action's features |
| possible_action_features | list[dict[str, float]] | every candidate at this step |
| possible_next_action_features | list[dict[str, float]] | every candidate at the next step; `[]` on the terminal row |

`action` stays an id string (for logs and CPE); the model only sees the features. Candidate
lists are padded to the batch's largest count with NaN features and a 0 in the candidate mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from features import (
    NormalizationConfig,
    NormalizationSpec,
    build_feature_matrix,
    fit_normalization,
    frame_from_feature_maps,
)
from trainer.artifact import DataRange
from trainer.data import checked_rewards, feature_maps
from trainer.errors import TrainingDataError

PARAMETRIC_COLUMNS = (
    "mdp_id",
    "sequence_number",
    "state_features",
    "action_features",
    "possible_action_features",
    "reward",
    "next_state_features",
    "possible_next_action_features",
    "not_terminal",
)


@dataclass(frozen=True, slots=True)
class ParametricTransitions:
    """One logged step per row; candidate tensors are NaN-padded to the widest row."""

    states: torch.Tensor  # float32 [N, F] raw, NaN = missing
    action_features: torch.Tensor  # float32 [N, G] raw features of the logged action
    rewards: torch.Tensor  # float32 [N]
    not_terminal: torch.Tensor  # float32 [N]
    next_states: torch.Tensor  # float32 [N, F]
    next_candidates: torch.Tensor  # float32 [N, K, G], NaN padding
    next_mask: torch.Tensor  # float32 [N, K], 1 = a real candidate; all 0 on terminal rows

    @property
    def n_rows(self) -> int:
        return int(self.rewards.shape[0])


def candidate_tensor(
    candidate_lists: Iterable[Iterable[Any] | None], names: Sequence[str], width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, K, G] raw features (NaN = missing or padding) and the [N, K] candidate mask."""
    rows = [feature_maps([] if c is None else list(c)) for c in candidate_lists]
    k = max([len(r) for r in rows] + [width or 0, 1])
    out = np.full((len(rows), k, len(names)), np.nan, dtype=np.float32)
    mask = np.zeros((len(rows), k), dtype=np.float32)
    for i, maps in enumerate(rows):
        if maps:
            out[i, : len(maps)] = build_feature_matrix(maps, list(names))
            mask[i, : len(maps)] = 1.0
    return out, mask


def fit_action_normalization(
    timelines: pd.DataFrame, config: NormalizationConfig | None = None
) -> NormalizationSpec:
    """A spec for action features, fitted on every candidate the timelines offered (not only chosen)."""
    _check_columns(timelines, ("possible_action_features",))
    maps = [m for candidates in timelines["possible_action_features"] for m in feature_maps(candidates)]
    if not maps:
        raise TrainingDataError(
            "possible_action_features is empty on every row; parametric training needs candidate "
            "feature maps (see trainer/parametric_data.py for the columns)",
            column="possible_action_features",
        )
    return fit_normalization(frame_from_feature_maps(maps), config)


def build_parametric_transitions(
    timelines: pd.DataFrame,
    feature_names: Sequence[str],
    action_feature_names: Sequence[str],
    reward_clip: float | None = None,
) -> ParametricTransitions:
    """Validate parametric timelines and build the tensors; problems name the rows to look at."""
    _check_columns(timelines, PARAMETRIC_COLUMNS)
    if len(timelines) == 0:
        raise TrainingDataError("timelines are empty; nothing to train on (check the date range loaded)")
    frame = timelines.reset_index(drop=True)
    rewards = checked_rewards(frame, reward_clip)
    not_terminal = frame["not_terminal"].to_numpy(dtype=bool)
    next_candidates, next_mask = candidate_tensor(
        frame["possible_next_action_features"], action_feature_names
    )
    no_next = np.flatnonzero(not_terminal & (next_mask.sum(axis=1) == 0))
    if len(no_next):
        raise TrainingDataError(
            f"non-terminal rows {no_next[:5].tolist()} have no possible_next_action_features; a step "
            "with a successor needs at least one candidate",
            column="possible_next_action_features",
            rows=no_next.tolist(),
        )
    next_mask[~not_terminal] = 0.0
    states = build_feature_matrix(feature_maps(frame["state_features"]), list(feature_names))
    next_states = build_feature_matrix(feature_maps(frame["next_state_features"]), list(feature_names))
    chosen = build_feature_matrix(feature_maps(frame["action_features"]), list(action_feature_names))
    return ParametricTransitions(
        states=torch.as_tensor(np.asarray(states, dtype=np.float32)),
        action_features=torch.as_tensor(np.asarray(chosen, dtype=np.float32)),
        rewards=torch.as_tensor(rewards.astype(np.float32)),
        not_terminal=torch.as_tensor(not_terminal.astype(np.float32)),
        next_states=torch.as_tensor(np.asarray(next_states, dtype=np.float32)),
        next_candidates=torch.as_tensor(next_candidates),
        next_mask=torch.as_tensor(next_mask),
    )


def timeline_data_range(timelines: pd.DataFrame) -> DataRange:
    """The decision-time range and row count a model was trained on (for its metadata)."""
    if "timestamp" not in timelines.columns or len(timelines) == 0:
        return DataRange(rows=len(timelines))
    stamps = pd.to_datetime(timelines["timestamp"], utc=True)
    return DataRange(
        start=stamps.min().to_pydatetime(), end=stamps.max().to_pydatetime(), rows=len(timelines)
    )


def _check_columns(timelines: pd.DataFrame, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in timelines.columns]
    if missing:
        raise TrainingDataError(
            f"parametric timelines lack columns {missing} (have {sorted(timelines.columns)}); "
            "see trainer/parametric_data.py for the parametric-action columns",
            column=missing[0],
        )
