"""Continuous actions: kernel-smoothed IPS and DR (Kallus & Zhou 2018), sequential DR and FQE.

The logged decision is `action_vector` with `action_log_density` (log μ(a|x) under the logging
policy). The served target is represented by M draws a'_m ~ π(·|x) per decision (the
function serving samples from, `act`); their mean is the target's action. Weights are
w_i = mean_m K_h(a'_mi − a_i) / μ(a_i|x_i) with the bandwidth rule of `evaluation.kernel`;
q̂ and FQE's Q are one ridge model on φ(state, action) (`evaluation.joint_models`), and
E_π q̂(x, ·) averages it over the same draws. Estimators on these weights are reported as
`kernel_ips`, `kernel_dr`, …; the headline is `kernel_dr`, which keeps the kernel's variance
reduction while its reward model removes most of the smoothing bias O(h²).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from contracts import ActionKind
from contracts.actions import ACTION_LOG_DENSITY_COLUMN, ACTION_VECTOR_COLUMN
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.health import TargetOverlap, check_data_health
from evaluation.joint_models import JointDesign, quadratic_features
from evaluation.kernel import choose_bandwidth, describe_smoothing, kernel_weights
from evaluation.kinds import EvaluatedPolicy
from evaluation.report import CpeReport
from evaluation.scoring import (
    check_timelines,
    dimension_summaries,
    report_from_scores,
    row_names,
    score_joint_design,
)
from features import NormalizationSpec, build_feature_matrix, normalize
from trainer.data import feature_maps

KIND = ActionKind.CONTINUOUS
KERNEL_PREFIX = "kernel_"


class ContinuousServedPolicy(EvaluatedPolicy, Protocol):
    """A served continuous policy (`trainer.onnx_policy.load_policy`): it draws actions with `act`."""

    def act(
        self, features_raw: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def draw_target_actions(
    policy: ContinuousServedPolicy, maps: Sequence[Mapping[str, float]], samples: int, seed: int
) -> np.ndarray:
    """[samples, N, D] actions drawn from the served policy (`act`, the function serving samples from)."""
    rng = np.random.default_rng(seed)
    features = policy.features(maps)
    return np.stack([np.asarray(policy.act(features, rng)[0], dtype=np.float64) for _ in range(samples)])


def evaluate_served(
    timelines: pd.DataFrame, policy: ContinuousServedPolicy, config: EvaluationConfig, spec: NormalizationSpec
) -> CpeReport:
    """Draw `config.kernel.target_samples` served actions per decision, then `evaluate_action_samples`."""
    frame = check_timelines(timelines, KIND)
    try:
        draws = draw_target_actions(
            policy, feature_maps(frame["state_features"]), config.kernel.target_samples, config.seed
        )
    except Exception as exc:
        raise EvaluationError(f"model {policy.version} could not score the timelines: {exc}") from exc
    return evaluate_action_samples(frame, draws, policy.version, config, spec, list(policy.metadata.actions))


def logged_actions(frame: pd.DataFrame, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(action_vector [N, D], action_log_density [N]) of sorted timelines, checked."""
    vectors = frame[ACTION_VECTOR_COLUMN].tolist()
    wrong = np.flatnonzero([v is None or len(v) != dims for v in vectors])
    if wrong.size:
        names = row_names(frame, wrong)
        raise EvaluationError(
            f"{wrong.size} rows have a missing {ACTION_VECTOR_COLUMN} or one whose length is not {dims} (the "
            f"target's action dimensions), e.g. {names}",
            column=ACTION_VECTOR_COLUMN,
            rows=names,
        )
    actions = np.asarray([list(v) for v in vectors], dtype=np.float64).reshape(len(frame), dims)
    log_mu = pd.to_numeric(frame[ACTION_LOG_DENSITY_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(np.all(np.isfinite(actions), axis=1) & np.isfinite(log_mu)))
    if bad.size:
        names = row_names(frame, bad)
        raise EvaluationError(
            f"{bad.size} rows have a non-finite {ACTION_VECTOR_COLUMN} or {ACTION_LOG_DENSITY_COLUMN} (e.g. "
            f"{names}); the logger must record the action and its log density under the logging policy",
            column=ACTION_LOG_DENSITY_COLUMN,
            rows=names,
        )
    return actions, log_mu


def evaluate_action_samples(
    timelines: pd.DataFrame,
    target_samples: np.ndarray,
    model_version: str,
    config: EvaluationConfig,
    spec: NormalizationSpec,
    action_names: list[str] | None = None,
) -> CpeReport:
    """Every estimator for a continuous target given as draws [M, N, D] per decision (M = 1 and the
    action itself for a deterministic target), rows of `timelines` sorted by (mdp_id, step)."""
    frame = check_timelines(timelines, KIND)
    draws = np.asarray(target_samples, dtype=np.float64)
    n = len(frame)
    if draws.ndim != 3 or draws.shape[1] != n or draws.shape[0] < 1 or not np.all(np.isfinite(draws)):
        raise EvaluationError(
            f"target_samples must be finite [draws ≥ 1, {n}, action dims], got shape {draws.shape}"
        )
    dims = draws.shape[2]
    names = action_names if action_names is not None else [f"a{j}" for j in range(dims)]
    if len(names) != dims:
        raise EvaluationError(f"{len(names)} action names {names} for {dims} action dimensions")
    actions, log_mu = logged_actions(frame, dims)
    target_mean = draws.mean(axis=0)
    bandwidth, sigma, rule = choose_bandwidth(actions, target_mean, config.kernel)
    weights = kernel_weights(actions, draws, log_mu, bandwidth)

    state = np.asarray(
        normalize(spec, build_feature_matrix(feature_maps(frame["state_features"]), spec.feature_names)),
        dtype=np.float64,
    )
    center, scale = actions.mean(axis=0), actions.std(axis=0)
    scale = np.where(scale > 0.0, scale, 1.0)
    target_design = np.zeros((n, quadratic_features(state[:1], actions[:1]).shape[1]))
    for draw in draws:
        target_design += quadratic_features(state, (draw - center) / scale)
    design = JointDesign(
        logged=quadratic_features(state, (actions - center) / scale), target=target_design / draws.shape[0]
    )
    scored = score_joint_design(
        frame,
        design,
        config,
        weights=weights,
        propensity=np.exp(log_mu),
        prefix=KERNEL_PREFIX,
        action_dimensions=dimension_summaries(names, actions, target_mean, np.mean(draws**2, axis=0)),
        kernel=describe_smoothing(weights, bandwidth, sigma, rule, draws.shape[0]),
    )
    report = report_from_scores(frame, KIND, scored, model_version, config)
    overlap = TargetOverlap(weights=weights)
    health = check_data_health(frame, config.health, KIND, overlap=overlap, feature_names=spec.feature_names)
    return report.model_copy(update={"data_health": health})
