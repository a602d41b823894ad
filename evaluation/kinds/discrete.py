"""Discrete actions: the target is a distribution over the model's named actions.

Weights π(a|x)/μ(a|x) of the logged action; the reward model and FQE have one ridge head per
action. `evaluate_probabilities` evaluates any target given as probabilities [rows, actions].
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import pandas as pd

from contracts import ActionKind
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.estimators import importance_weights, logged_columns
from evaluation.fqe import fitted_q_evaluation
from evaluation.health import TargetOverlap, check_data_health
from evaluation.joint_models import second_order_state
from evaluation.kinds import EvaluatedPolicy
from evaluation.refit import LinearDesign
from evaluation.report import ActionSummary, CpeReport
from evaluation.reward_model import cross_fit_reward_model
from evaluation.scoring import (
    ScoredDecisions,
    check_probabilities,
    check_timelines,
    episode_index,
    report_from_scores,
    row_names,
)
from features import NormalizationSpec, build_feature_matrix, normalize
from trainer.data import build_possible_mask, feature_maps

LOGGED_COLUMNS = ("action", "action_probability", "possible_actions")
# Fewer rows than this per coefficient of the second-order heads: the heads stay linear in the state.
ROWS_PER_COEFFICIENT = 10


class DiscreteServedPolicy(EvaluatedPolicy, Protocol):
    """A served discrete policy (`trainer.OnnxPolicy`): a distribution over its named actions."""

    def possible_mask(self, possible_actions: Iterable[Iterable[str]]) -> np.ndarray: ...

    def probabilities(self, features_raw: np.ndarray, possible_mask: np.ndarray) -> np.ndarray: ...


def _logged_action_index(frame: pd.DataFrame, actions: list[str], model_version: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(actions)}
    logged = frame["action"].map(index)
    unknown = logged.isna().to_numpy()
    if unknown.any():
        rows = np.flatnonzero(unknown)
        names = sorted(set(frame["action"].iloc[rows].astype(str)))
        raise EvaluationError(
            f"logged actions {names[:10]} ({rows.size} rows, e.g. {row_names(frame, rows)}) are not actions of "
            f"model {model_version} ({actions}); evaluate on timelines with the model's action set",
            column="action",
            rows=row_names(frame, rows),
        )
    return logged.to_numpy(dtype=np.int64)


def _checked(timelines: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    frame = check_timelines(timelines, ActionKind.DISCRETE, LOGGED_COLUMNS)
    return frame, check_probabilities(frame)


def evaluate_served(
    timelines: pd.DataFrame, policy: DiscreteServedPolicy, config: EvaluationConfig, spec: NormalizationSpec
) -> CpeReport:
    """Score the timelines with the model's graph and exploration, then `evaluate_probabilities`."""
    frame, _ = _checked(timelines)
    actions = list(policy.metadata.actions)
    _logged_action_index(frame, actions, policy.version)
    maps = feature_maps(frame["state_features"])
    possible = [list(p) if p is not None else [] for p in frame["possible_actions"]]
    try:
        mask = policy.possible_mask(possible)
        target = policy.probabilities(policy.features(maps), mask)
    except Exception as exc:
        raise EvaluationError(f"model {policy.version} could not score the timelines: {exc}") from exc
    return evaluate_probabilities(frame, target, actions, policy.version, config, spec)


def _model_design(state: np.ndarray, n_features: int, n_heads: int) -> np.ndarray:
    """Both models' per-action design (the intercept is the fit's): the value columns to second
    order when the data carry `ROWS_PER_COEFFICIENT` rows per coefficient of every head (else
    linear), then the presence columns (features/transform.py's layout) that vary, left linear."""
    values, presence = state[:, :-n_features], state[:, -n_features:]
    presence = presence[:, presence.min(axis=0) < presence.max(axis=0)]
    second = second_order_state(values)
    if len(state) < ROWS_PER_COEFFICIENT * n_heads * (1 + second.shape[1] + presence.shape[1]):
        second = values  # a few hundred rows: the products' coefficients would fit the noise
    return np.hstack([second, presence])


def evaluate_probabilities(
    timelines: pd.DataFrame,
    target_probs: np.ndarray,
    actions: list[str],
    model_version: str,
    config: EvaluationConfig,
    spec: NormalizationSpec,
) -> CpeReport:
    """Every estimator for a target policy given as probabilities [N, A] over `actions`.

    `target_probs[i]` must belong to row i of `timelines` sorted by (mdp_id, sequence_number_ordinal)
    (rows already in that order are left as they are).
    """
    frame, mu = _checked(timelines)
    target = np.asarray(target_probs, dtype=np.float64)
    if target.shape != (len(frame), len(actions)):
        raise EvaluationError(
            f"target_probs has shape {target.shape}; expected ({len(frame)}, {len(actions)}) = (rows, actions)"
        )
    logged_action = _logged_action_index(frame, actions, model_version)
    reward = frame["reward"].to_numpy(dtype=np.float64)
    pi, a, mu, reward = logged_columns(target, logged_action, mu, reward)
    episode = episode_index(frame)

    state = normalize(spec, build_feature_matrix(feature_maps(frame["state_features"]), spec.feature_names))
    x = _model_design(state, spec.n_features, len(actions))
    reward_fit = cross_fit_reward_model(x, a, reward, episode, actions, config.reward_model, seed=config.seed)
    fqe = fitted_q_evaluation(x, episode, a, reward, pi, config.gamma, config.fqe, config.seed)
    rows = np.arange(len(frame))
    weights = importance_weights(pi, a, mu)
    scored = ScoredDecisions(
        weights=weights,
        propensity=mu,
        reward_logged=reward_fit.q_hat[rows, a],
        reward_target=np.sum(pi * reward_fit.q_hat, axis=1),
        q_logged=fqe.q_hat[rows, a],
        v_target=np.sum(pi * fqe.q_hat, axis=1),
        reward_fit=reward_fit.fit,
        fqe_fit=fqe.fit,
        design=LinearDesign.per_action(x, a, pi, episode, reward),
        actions=_action_summaries(actions, a, pi, reward, reward_fit.q_hat),
    )
    report = report_from_scores(frame, ActionKind.DISCRETE, scored, model_version, config)
    offered, _ = build_possible_mask(frame["possible_actions"], actions)
    overlap = TargetOverlap(
        weights=weights, offered_mass=np.sum(pi * offered, axis=1), offered_known=offered.any(axis=1)
    )
    health = check_data_health(
        frame, config.health, ActionKind.DISCRETE, overlap=overlap, feature_names=spec.feature_names
    )
    return report.model_copy(update={"data_health": health})


def _action_summaries(
    actions: list[str], logged_action: np.ndarray, target: np.ndarray, reward: np.ndarray, q_hat: np.ndarray
) -> tuple[ActionSummary, ...]:
    counts = np.bincount(logged_action, minlength=len(actions))
    sums = np.bincount(logged_action, weights=reward, minlength=len(actions))
    return tuple(
        ActionSummary(
            action=name,
            logged_share=float(counts[i] / logged_action.size),
            target_share=float(target[:, i].mean()),
            logged_mean_reward=float(sums[i] / counts[i]) if counts[i] else None,
            model_mean_reward=float(q_hat[:, i].mean()),
        )
        for i, name in enumerate(actions)
    )
