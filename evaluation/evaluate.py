"""Timelines + a served model → CpeReport: the model scored exactly as serving would run it.

Target probabilities come from `OnnxPolicy.probabilities` (Q-values → exploration), the same
function serving samples from, so the estimate is of the model *as served*. The headline is
the one-step doubly robust mean reward per decision. `evaluate_probabilities` is the same
evaluation for any target policy given as probabilities (simulators, benchmarks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.estimators import Estimate, EstimatorSpec, bootstrapped_estimates, one_step_estimates
from evaluation.fqe import fitted_q_evaluation
from evaluation.report import HEADLINE_ESTIMATOR, ActionSummary, CpeReport, WeightHistogram, describe_verdict
from evaluation.reward_model import cross_fit_reward_model
from evaluation.sequential import sequential_estimates
from features import NormalizationSpec, build_feature_matrix, normalize
from trainer import OnnxPolicy
from trainer.data import feature_maps

REQUIRED_COLUMNS = (
    "mdp_id",
    "sequence_number_ordinal",
    "state_features",
    "action",
    "action_probability",
    "reward",
    "possible_actions",
    "model_version",
)
_ROWS_NAMED = 5


def _row_names(frame: pd.DataFrame, rows: np.ndarray) -> list[str]:
    picked = frame.iloc[rows[:_ROWS_NAMED]]
    return [f"{m}#{s}" for m, s in zip(picked["mdp_id"], picked["sequence_number_ordinal"], strict=True)]


def _check_timelines(timelines: pd.DataFrame) -> pd.DataFrame:
    """Required columns, at least one row, propensities in (0, 1], finite rewards; rows sorted."""
    missing = [c for c in REQUIRED_COLUMNS if c not in timelines.columns]
    if missing:
        raise EvaluationError(
            f"timelines lack columns {missing} (have {list(timelines.columns)}); "
            "load them with stream.load_timelines",
            column=missing[0],
        )
    if len(timelines) == 0:
        raise EvaluationError("timelines are empty: nothing to evaluate; check the date range loaded")
    frame = timelines.sort_values(["mdp_id", "sequence_number_ordinal"], kind="stable").reset_index(drop=True)
    mu = pd.to_numeric(frame["action_probability"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~((mu > 0.0) & (mu <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        names = _row_names(frame, bad)
        raise EvaluationError(
            f"{bad.size} of {len(frame)} rows have a logged action_probability that is missing, ≤ 0 or > 1 "
            f"(e.g. {names} = {mu[bad[:_ROWS_NAMED]].tolist()}); propensities must be in (0, 1] — fix the "
            "decision logger or drop those rows",
            column="action_probability",
            rows=names,
        )
    reward = pd.to_numeric(frame["reward"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(reward))
    if bad.size:
        names = _row_names(frame, bad)
        raise EvaluationError(
            f"{bad.size} rows have a missing or non-finite reward (e.g. {names}); timelines give 0.0 "
            "when no reward arrived — check the timeline job",
            column="reward",
            rows=names,
        )
    return frame


def _logged_action_index(frame: pd.DataFrame, actions: list[str], model_version: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(actions)}
    logged = frame["action"].map(index)
    unknown = logged.isna().to_numpy()
    if unknown.any():
        rows = np.flatnonzero(unknown)
        names = sorted(set(frame["action"].iloc[rows].astype(str)))
        raise EvaluationError(
            f"logged actions {names[:10]} ({rows.size} rows, e.g. {_row_names(frame, rows)}) are not actions of "
            f"model {model_version} ({actions}); evaluate on timelines with the model's action set",
            column="action",
            rows=_row_names(frame, rows),
        )
    return logged.to_numpy(dtype=np.int64)


def evaluate_policy(
    timelines: pd.DataFrame, policy: OnnxPolicy, config: EvaluationConfig, spec: NormalizationSpec
) -> CpeReport:
    """Estimate the mean reward per decision of `policy` as served, on logged `timelines`.

    `spec` normalizes features for the reward model (the policy normalizes inside its graph).
    Raises `EvaluationError` for data that cannot be evaluated; data that is merely too small
    yields a report with `reliable=False`, which the gate rejects.
    """
    frame = _check_timelines(timelines)
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
    frame = _check_timelines(timelines)
    target = np.asarray(target_probs, dtype=np.float64)
    if target.shape != (len(frame), len(actions)):
        raise EvaluationError(
            f"target_probs has shape {target.shape}; expected ({len(frame)}, {len(actions)}) = (rows, actions)"
        )
    logged_action = _logged_action_index(frame, actions, model_version)
    mu = frame["action_probability"].to_numpy(dtype=np.float64)
    reward = frame["reward"].to_numpy(dtype=np.float64)
    episode = pd.factorize(frame["mdp_id"], sort=False)[0].astype(np.int64)  # rows are sorted by mdp_id

    x = normalize(spec, build_feature_matrix(feature_maps(frame["state_features"]), spec.feature_names))
    reward_fit = cross_fit_reward_model(
        x, logged_action, reward, episode, actions, config.reward_model, seed=config.seed
    )
    fqe = fitted_q_evaluation(
        x, episode, logged_action, reward, target, config.gamma, config.fqe, config.seed
    )
    boot = {
        "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples,
        "seed": config.seed,
    }
    estimates = one_step_estimates(
        target, reward_fit.q_hat, logged_action, mu, reward, switch_threshold=config.switch_threshold, **boot
    )
    # The sequential DR family uses FQE's long-term Q^π as q̂ (the immediate-reward model would
    # stay unbiased but leave the future entirely to the importance weights).
    estimates.update(
        sequential_estimates(episode, target, fqe.q_hat, logged_action, mu, reward, config.gamma, **boot)
    )
    estimates["fqe"] = _fqe_estimate(episode, target, fqe.q_hat, mu, reward, config)

    logged_value = float(reward.mean())
    warnings: list[str] = []
    if len(frame) < config.min_rows:
        warnings.append(f"only {len(frame)} decisions, fewer than min_rows={config.min_rows}")
    headline = estimates[HEADLINE_ESTIMATOR]
    warnings.extend(headline.warnings)
    reliable = not warnings
    timestamps = pd.to_datetime(frame["timestamp"], utc=True) if "timestamp" in frame.columns else None
    w = target[np.arange(len(frame)), logged_action] / mu
    return CpeReport(
        model_version=model_version,
        logged_policy_versions=sorted(set(frame["model_version"].astype(str))),
        n_decisions=len(frame),
        n_episodes=int(episode.max()) + 1,
        logged_value=logged_value,
        logged_episode_value=estimates["sequential_dr"].logged_value,
        gamma=config.gamma,
        estimates=estimates,
        reward_model=reward_fit.fit,
        fqe=fqe.fit,
        actions=_action_summaries(actions, logged_action, target, reward, reward_fit.q_hat),
        weight_histogram=_weight_histogram(w),
        reliable=reliable,
        warnings=warnings,
        verdict=describe_verdict(model_version, logged_value, headline, reliable, warnings),
        data_start=None if timestamps is None else timestamps.min().to_pydatetime(),
        data_end=None if timestamps is None else timestamps.max().to_pydatetime(),
    )


def _fqe_estimate(
    episode: np.ndarray,
    target: np.ndarray,
    q_hat: np.ndarray,
    mu: np.ndarray,
    reward: np.ndarray,
    config: EvaluationConfig,
) -> Estimate:
    """FQE's value: mean over episodes of v̂(x_0); the interval resamples start states, not the fit."""
    starts = np.flatnonzero(np.r_[True, np.diff(episode) > 0])
    step = np.arange(episode.size) - starts[episode]
    logged_return = np.bincount(episode, weights=config.gamma**step * reward)
    v0 = np.sum(target[starts] * q_hat[starts], axis=1)
    columns = np.stack([logged_return, v0], axis=1)
    specs = {"fqe": EstimatorSpec(value_of=lambda m: m[..., 1], weights=None)}
    return bootstrapped_estimates(
        specs, columns, mu, config.confidence, config.bootstrap_samples, config.seed
    )["fqe"]


def _action_summaries(
    actions: list[str], logged_action: np.ndarray, target: np.ndarray, reward: np.ndarray, q_hat: np.ndarray
) -> list[ActionSummary]:
    counts = np.bincount(logged_action, minlength=len(actions))
    sums = np.bincount(logged_action, weights=reward, minlength=len(actions))
    return [
        ActionSummary(
            action=name,
            logged_share=float(counts[i] / logged_action.size),
            target_share=float(target[:, i].mean()),
            logged_mean_reward=float(sums[i] / counts[i]) if counts[i] else None,
            model_mean_reward=float(q_hat[:, i].mean()),
        )
        for i, name in enumerate(actions)
    ]


def _weight_histogram(w: np.ndarray, bins: int = 24) -> WeightHistogram:
    positive = w[w > 0.0]
    if positive.size == 0:
        return WeightHistogram(edges=[], counts=[], zeros=int(w.size))
    low, high = np.log10(positive.min()), np.log10(positive.max())
    edges = np.logspace(low, high if high > low else low + 1e-6, bins + 1)
    counts, edges = np.histogram(positive, bins=edges)
    return WeightHistogram(edges=edges.tolist(), counts=counts.tolist(), zeros=int(w.size - positive.size))
