"""Parametric actions: each row offers its own candidates, each described by a feature map.

The target is a distribution over that row's candidates (`possible_actions`, aligned with
`possible_action_features`); the logged `action` is the chosen candidate's id. Target
probabilities are padded to [rows, K] with zeros after a row's last candidate, so the discrete
formulas hold unchanged: w = π(k_logged|x)/μ. Candidates differ per row, so q̂ and FQE's Q are one
ridge model on φ(state, candidate features) (`evaluation.joint_models`), with
E_π q̂(x, ·) = Σ_k π_k q̂(x, candidate_k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from contracts import ActionKind
from contracts.actions import POSSIBLE_ACTION_FEATURES_COLUMN
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.health import TargetOverlap, check_data_health
from evaluation.joint_models import JointDesign, quadratic_features
from evaluation.kinds import EvaluatedPolicy
from evaluation.report import CpeReport
from evaluation.scoring import (
    check_probabilities,
    check_timelines,
    dimension_summaries,
    report_from_scores,
    row_names,
    score_joint_design,
)
from features import NormalizationSpec, build_feature_matrix, normalize
from trainer.data import feature_maps

LOGGED_COLUMNS = ("action", "action_probability", "possible_actions")
KIND = ActionKind.PARAMETRIC


class ParametricServedPolicy(EvaluatedPolicy, Protocol):
    """A served parametric policy (`trainer.onnx_policy.load_policy`): a distribution over each row's candidates."""

    def candidates(
        self, candidate_lists: Sequence[Sequence[Mapping[str, float | None]]]
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def probabilities(
        self, features_raw: np.ndarray, action_features: np.ndarray, candidate_mask: np.ndarray
    ) -> np.ndarray: ...


def _candidate_lists(frame: pd.DataFrame) -> tuple[list[list[dict[str, float]]], np.ndarray]:
    """Per row the candidates' feature maps and the logged candidate's position in them."""
    ids = [list(p) if p is not None else [] for p in frame["possible_actions"]]
    features = [
        feature_maps(list(p)) if p is not None else [] for p in frame[POSSIBLE_ACTION_FEATURES_COLUMN]
    ]
    misaligned = np.flatnonzero([len(i) != len(f) or not i for i, f in zip(ids, features, strict=True)])
    if misaligned.size:
        names = row_names(frame, misaligned)
        raise EvaluationError(
            f"{misaligned.size} rows have no candidates or a {POSSIBLE_ACTION_FEATURES_COLUMN} list whose "
            f"length differs from possible_actions (e.g. {names}); parametric timelines need one feature map "
            "per candidate id, in the same order",
            column=POSSIBLE_ACTION_FEATURES_COLUMN,
            rows=names,
        )
    chosen = np.array([i.index(a) if a in i else -1 for i, a in zip(ids, frame["action"], strict=True)])
    missing = np.flatnonzero(chosen < 0)
    if missing.size:
        names = row_names(frame, missing)
        raise EvaluationError(
            f"{missing.size} rows log an action that is not one of their candidates (e.g. {names}); the "
            "parametric `action` must be an id in that row's possible_actions",
            column="action",
            rows=names,
        )
    return features, chosen


def _checked(timelines: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    frame = check_timelines(timelines, KIND, LOGGED_COLUMNS)
    return frame, check_probabilities(frame)


def evaluate_served(
    timelines: pd.DataFrame, policy: ParametricServedPolicy, config: EvaluationConfig, spec: NormalizationSpec
) -> CpeReport:
    """Score every row's candidates with the served model's distribution, then evaluate."""
    frame, _ = _checked(timelines)
    candidates, _ = _candidate_lists(frame)
    try:
        action_features, candidate_mask = policy.candidates(candidates)
        target = policy.probabilities(
            policy.features(feature_maps(frame["state_features"])), action_features, candidate_mask
        )
    except Exception as exc:
        raise EvaluationError(f"model {policy.version} could not score the timelines: {exc}") from exc
    return evaluate_candidate_probabilities(frame, target, policy.version, config, spec)


def _candidate_matrix(candidates: list[list[dict[str, float]]], width: int) -> tuple[np.ndarray, list[str]]:
    """Raw candidate features [N, K, G] (NaN = missing or padding) and the G names (sorted union)."""
    names = sorted({name for row in candidates for c in row for name in c})
    flat = [c for row in candidates for c in row]
    values = build_feature_matrix(flat, names).astype(np.float64)
    out = np.full((len(candidates), width, len(names)), np.nan)
    counts = np.array([len(row) for row in candidates])
    rows = np.repeat(np.arange(len(candidates)), counts)
    slots = np.concatenate([np.arange(c) for c in counts]) if flat else np.zeros(0, np.int64)
    out[rows, slots] = values
    return out, names


def _standardized(raw: np.ndarray) -> np.ndarray:
    """(v − mean)/std per feature over all candidates, missing → 0, plus presence columns where any is missing."""
    flat = raw.reshape(-1, raw.shape[-1])
    present = np.isfinite(flat)
    mean = np.array(
        [flat[present[:, j], j].mean() if present[:, j].any() else 0.0 for j in range(flat.shape[1])]
    )
    std = np.array(
        [flat[present[:, j], j].std() if present[:, j].any() else 1.0 for j in range(flat.shape[1])]
    )
    z = np.where(present, (flat - mean) / np.where(std > 0.0, std, 1.0), 0.0)
    gaps = ~present.all(axis=0)
    z = np.hstack([z, present[:, gaps].astype(np.float64)])
    return z.reshape(*raw.shape[:-1], z.shape[-1])


def evaluate_candidate_probabilities(
    timelines: pd.DataFrame,
    target_probs: np.ndarray,
    model_version: str,
    config: EvaluationConfig,
    spec: NormalizationSpec,
) -> CpeReport:
    """Every estimator for a target given as probabilities [N, K] over each row's candidates.

    Column k of row i is that row's k-th candidate (`possible_actions` order); columns after the
    row's last candidate are padding and must be 0. Rows belong to `timelines` sorted by
    (mdp_id, sequence_number_ordinal).
    """
    frame, mu = _checked(timelines)
    candidates, chosen = _candidate_lists(frame)
    n = len(frame)
    counts = np.array([len(row) for row in candidates])
    pi = np.asarray(target_probs, dtype=np.float64)
    if pi.ndim != 2 or pi.shape[0] != n or pi.shape[1] < counts.max():
        raise EvaluationError(
            f"target_probs has shape {pi.shape}; expected ({n}, ≥ {counts.max()}) = (rows, most candidates in a row)"
        )
    padding = np.arange(pi.shape[1])[None, :] >= counts[:, None]
    bad = np.flatnonzero(
        ~np.all(np.isfinite(pi) & (pi >= 0.0), axis=1)
        | (np.abs(pi.sum(axis=1) - 1.0) > 1e-3)
        | np.any(padding & (pi > 1e-6), axis=1)
    )
    if bad.size:
        raise EvaluationError(
            f"target_probs must be finite, ≥ 0, sum to 1 over each row's candidates and be 0 on padding; "
            f"{bad.size} rows are not (e.g. {row_names(frame, bad)})",
            rows=row_names(frame, bad),
        )
    pi = np.where(padding, 0.0, pi)
    raw, names = _candidate_matrix(candidates, pi.shape[1])
    action_z = _standardized(raw)
    state = normalize(spec, build_feature_matrix(feature_maps(frame["state_features"]), spec.feature_names))
    state = np.asarray(state, dtype=np.float64)
    rows = np.arange(n)
    logged_design = quadratic_features(state, action_z[rows, chosen])
    target_design = np.zeros_like(logged_design)
    for k in range(pi.shape[1]):
        target_design += pi[:, k : k + 1] * quadratic_features(state, action_z[:, k])
    filled = np.nan_to_num(raw)
    weights = pi[rows, chosen] / mu
    scored = score_joint_design(
        frame,
        JointDesign(logged=logged_design, target=target_design),
        config,
        weights=weights,
        propensity=mu,
        action_dimensions=dimension_summaries(
            names,
            raw[rows, chosen],
            np.einsum("nk,nkg->ng", pi, filled),
            np.einsum("nk,nkg->ng", pi, filled**2),
        ),
    )
    report = report_from_scores(frame, KIND, scored, model_version, config)
    # Every row offers its candidates, and the target lives on them (padding is 0).
    overlap = TargetOverlap(weights=weights, offered_mass=pi.sum(axis=1))
    health = check_data_health(frame, config.health, KIND, overlap=overlap, feature_names=spec.feature_names)
    return report.model_copy(update={"data_health": health})
