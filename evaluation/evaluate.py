"""Timelines + a served model → CpeReport: the model scored exactly as serving would run it.

Target probabilities come from `OnnxPolicy.probabilities` (Q-values → exploration), the same
function serving samples from, so the estimate is of the model *as served*. The headline is
the doubly robust mean reward per decision.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.estimators import one_step_estimates, sequential_doubly_robust
from evaluation.report import HEADLINE_ESTIMATOR, CpeReport, describe_verdict
from evaluation.reward_model import cross_fit_reward_model
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
    logged_action = _logged_action_index(frame, actions, policy.version)
    mu = frame["action_probability"].to_numpy(dtype=np.float64)
    reward = frame["reward"].to_numpy(dtype=np.float64)
    episode = pd.factorize(frame["mdp_id"], sort=False)[0].astype(np.int64)  # rows are sorted by mdp_id

    maps = feature_maps(frame["state_features"])
    possible = [list(p) if p is not None else [] for p in frame["possible_actions"]]
    try:
        mask = policy.possible_mask(possible)
        target = policy.probabilities(policy.features(maps), mask)
    except Exception as exc:
        raise EvaluationError(f"model {policy.version} could not score the timelines: {exc}") from exc
    x = normalize(spec, build_feature_matrix(maps, spec.feature_names))
    reward_fit = cross_fit_reward_model(
        x, logged_action, reward, episode, actions, config.reward_model, seed=config.seed
    )

    boot = {
        "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples,
        "seed": config.seed,
    }
    estimates = one_step_estimates(target, reward_fit.q_hat, logged_action, mu, reward, **boot)
    # Sequential DR uses the immediate-reward model as q̂: still unbiased (propensities are known),
    # just higher variance than with a fitted long-term Q (e.g. FQE), which is future work.
    sequential, _ = sequential_doubly_robust(
        episode, target, reward_fit.q_hat, logged_action, mu, reward, config.gamma, **boot
    )
    estimates["sequential_dr"] = sequential

    logged_value = float(reward.mean())
    warnings: list[str] = []
    if len(frame) < config.min_rows:
        warnings.append(f"only {len(frame)} decisions, fewer than min_rows={config.min_rows}")
    if logged_value <= 0.0:
        warnings.append(
            f"the logged mean reward is {logged_value:.4g} ≤ 0, so normalized values are meaningless"
        )
    headline = estimates[HEADLINE_ESTIMATOR]
    if not all(math.isfinite(v) for v in (headline.value, headline.ci_low, headline.ci_high)):
        warnings.append("the DR estimate or its interval is not finite")
    reliable = not warnings
    timestamps = pd.to_datetime(frame["timestamp"], utc=True) if "timestamp" in frame.columns else None
    return CpeReport(
        model_version=policy.version,
        logged_policy_versions=sorted(set(frame["model_version"].astype(str))),
        n_decisions=len(frame),
        n_episodes=int(episode.max()) + 1,
        logged_value=logged_value,
        logged_episode_value=sequential.logged_value,
        gamma=config.gamma,
        estimates=estimates,
        reward_model=reward_fit.fit,
        reliable=reliable,
        warnings=warnings,
        verdict=describe_verdict(policy.version, logged_value, headline, reliable, warnings),
        data_start=None if timestamps is None else timestamps.min().to_pydatetime(),
        data_end=None if timestamps is None else timestamps.max().to_pydatetime(),
    )
