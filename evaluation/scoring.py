"""What every action kind hands the estimators, and the one report built from it.

Each kind's adapter (`evaluation.kinds`) turns timelines and a target policy into
`ScoredDecisions`: per decision the importance weight of the logged action, the reward model at
the logged action and under the target, and the same for FQE's Q^π. Every estimator — one-step,
sequential, FQE — is a function of those arrays, so the report, the gate and the HTML page do
not know which kind they judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contracts import KIND_COLUMNS, ActionKind
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.estimators import (
    ONE_STEP_ESTIMATORS,
    Estimate,
    EstimatorSpec,
    bootstrapped_estimates,
    weighted_one_step_estimates,
)
from evaluation.fqe import FqeFit
from evaluation.joint_models import JointDesign, cross_fit_joint_reward_model, joint_fitted_q_evaluation
from evaluation.kernel import KernelSmoothing
from evaluation.report import (
    ActionDimensionSummary,
    ActionSummary,
    CpeReport,
    WeightHistogram,
    describe_verdict,
)
from evaluation.reward_model import RewardModelFit
from evaluation.sequential import weighted_sequential_estimates

COMMON_COLUMNS = ("mdp_id", "sequence_number_ordinal", "state_features", "reward", "model_version")
_ROWS_NAMED = 5


@dataclass(frozen=True, slots=True)
class ScoredDecisions:
    """Per-decision inputs of every estimator, rows sorted by (mdp_id, sequence_number_ordinal).

    `weights` π/μ of the logged action (kernel-smoothed for continuous actions); `propensity` the
    logged μ (a probability, or a density for continuous actions; diagnostics only);
    `reward_logged`/`reward_target` the cross-fitted immediate-reward model q̂(x, a_logged) and
    E_π q̂(x, ·); `q_logged`/`v_target` the same for FQE's long-term Q^π. `prefix` names
    the weighted estimators ("kernel_" when the weights are kernel-smoothed).
    """

    weights: np.ndarray
    propensity: np.ndarray
    reward_logged: np.ndarray
    reward_target: np.ndarray
    q_logged: np.ndarray
    v_target: np.ndarray
    reward_fit: RewardModelFit
    fqe_fit: FqeFit
    prefix: str = ""
    actions: tuple[ActionSummary, ...] = ()
    action_dimensions: tuple[ActionDimensionSummary, ...] = ()
    kernel: KernelSmoothing | None = None


def row_names(frame: pd.DataFrame, rows: np.ndarray) -> list[str]:
    picked = frame.iloc[rows[:_ROWS_NAMED]]
    return [f"{m}#{s}" for m, s in zip(picked["mdp_id"], picked["sequence_number_ordinal"], strict=True)]


def check_timelines(
    timelines: pd.DataFrame, kind: ActionKind, extra_columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The columns `kind` needs, at least one row, finite rewards; rows sorted by (mdp_id, step)."""
    needed = (*COMMON_COLUMNS, *extra_columns, *KIND_COLUMNS[kind])
    missing = [c for c in needed if c not in timelines.columns]
    if missing:
        raise EvaluationError(
            f"timelines lack columns {missing} that {kind.value}-action evaluation needs (have "
            f"{list(timelines.columns)}); load them with stream.load_timelines from {kind.value}-action events",
            column=missing[0],
        )
    if len(timelines) == 0:
        raise EvaluationError("timelines are empty: nothing to evaluate; check the date range loaded")
    frame = timelines.sort_values(["mdp_id", "sequence_number_ordinal"], kind="stable").reset_index(drop=True)
    reward = pd.to_numeric(frame["reward"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(reward))
    if bad.size:
        names = row_names(frame, bad)
        raise EvaluationError(
            f"{bad.size} rows have a missing or non-finite reward (e.g. {names}); timelines give 0.0 "
            "when no reward arrived — check the timeline job",
            column="reward",
            rows=names,
        )
    return frame


def check_probabilities(frame: pd.DataFrame) -> np.ndarray:
    """The logged action_probability column as floats in (0, 1] (discrete and parametric kinds)."""
    mu = pd.to_numeric(frame["action_probability"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~((mu > 0.0) & (mu <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        names = row_names(frame, bad)
        raise EvaluationError(
            f"{bad.size} of {len(frame)} rows have a logged action_probability that is missing, ≤ 0 or > 1 "
            f"(e.g. {names} = {mu[bad[:_ROWS_NAMED]].tolist()}); propensities must be in (0, 1] — fix the "
            "decision logger or drop those rows",
            column="action_probability",
            rows=names,
        )
    return mu


def episode_index(frame: pd.DataFrame) -> np.ndarray:
    """0..E−1 per row of a frame sorted by mdp_id."""
    return pd.factorize(frame["mdp_id"], sort=False)[0].astype(np.int64)


def score_joint_design(
    frame: pd.DataFrame,
    design: JointDesign,
    config: EvaluationConfig,
    *,
    weights: np.ndarray,
    propensity: np.ndarray,
    **summaries: Any,
) -> ScoredDecisions:
    """`ScoredDecisions` of a kind whose actions are vectors (parametric, continuous): the reward
    model and FQE are one ridge model each on `design` (`evaluation.joint_models`), cross-fitted
    by episode. `summaries` are the kind's other fields (`prefix`, `action_dimensions`, `kernel`)."""
    reward = frame["reward"].to_numpy(dtype=np.float64)
    episode = episode_index(frame)
    q_reward, reward_fit = cross_fit_joint_reward_model(
        design, reward, episode, config.reward_model, config.seed
    )
    q_long, fqe_fit = joint_fitted_q_evaluation(
        design, episode, reward, config.gamma, config.fqe, config.seed
    )
    return ScoredDecisions(
        weights=weights,
        propensity=propensity,
        reward_logged=q_reward.logged,
        reward_target=q_reward.target,
        q_logged=q_long.logged,
        v_target=q_long.target,
        reward_fit=reward_fit,
        fqe_fit=fqe_fit,
        **summaries,
    )


def _prefixed(estimates: dict[str, Estimate], prefix: str) -> dict[str, Estimate]:
    out: dict[str, Estimate] = {}
    for name, estimate in estimates.items():
        key = name if name == "dm" else f"{prefix}{name}"
        warnings = [w.replace(f"{name}:", f"{key}:", 1) for w in estimate.warnings]
        out[key] = estimate.model_copy(update={"estimator": key, "warnings": warnings})
    return out


def report_from_scores(
    frame: pd.DataFrame,
    kind: ActionKind,
    scored: ScoredDecisions,
    model_version: str,
    config: EvaluationConfig,
) -> CpeReport:
    """Every estimator on `scored` (rows of `frame`, sorted), the diagnostics and the verdict."""
    reward = frame["reward"].to_numpy(dtype=np.float64)
    episode = episode_index(frame)
    boot = {
        "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples,
        "seed": config.seed,
    }
    w = np.asarray(scored.weights, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0.0)))
    if bad.size:
        raise EvaluationError(
            f"{bad.size} importance weights are negative or not finite (e.g. rows {row_names(frame, bad)}); "
            "check the logged propensities and the target policy's outputs",
            rows=row_names(frame, bad),
        )
    one_step = weighted_one_step_estimates(
        ONE_STEP_ESTIMATORS,
        w,
        scored.reward_target,
        scored.reward_logged,
        reward,
        scored.propensity,
        switch_threshold=config.switch_threshold,
        **boot,
    )
    # The sequential DR family uses FQE's long-term Q^π as q̂ (the immediate-reward model would
    # stay unbiased but leave the future entirely to the importance weights).
    sequential = weighted_sequential_estimates(
        episode, w, scored.v_target, scored.q_logged, reward, scored.propensity, config.gamma, **boot
    )
    estimates = {**_prefixed(one_step, scored.prefix), **_prefixed(sequential, scored.prefix)}
    estimates["fqe"] = _fqe_estimate(episode, scored.v_target, scored.propensity, reward, config)

    logged_value = float(reward.mean())
    warnings: list[str] = []
    if len(frame) < config.min_rows:
        warnings.append(f"only {len(frame)} decisions, fewer than min_rows={config.min_rows}")
    headline_name = f"{scored.prefix}dr"
    headline = estimates[headline_name]
    warnings.extend(headline.warnings)
    reliable = not warnings
    timestamps = pd.to_datetime(frame["timestamp"], utc=True) if "timestamp" in frame.columns else None
    return CpeReport(
        model_version=model_version,
        action_kind=kind,
        logged_policy_versions=sorted(set(frame["model_version"].astype(str))),
        n_decisions=len(frame),
        n_episodes=int(episode.max()) + 1,
        logged_value=logged_value,
        logged_episode_value=estimates[f"{scored.prefix}sequential_dr"].logged_value,
        gamma=config.gamma,
        estimates=estimates,
        headline=headline_name,
        reward_model=scored.reward_fit,
        fqe=scored.fqe_fit,
        actions=list(scored.actions),
        action_dimensions=list(scored.action_dimensions),
        kernel=scored.kernel,
        weight_histogram=weight_histogram(w),
        reliable=reliable,
        warnings=warnings,
        verdict=describe_verdict(model_version, logged_value, headline, reliable, warnings),
        data_start=None if timestamps is None else timestamps.min().to_pydatetime(),
        data_end=None if timestamps is None else timestamps.max().to_pydatetime(),
    )


def _fqe_estimate(
    episode: np.ndarray,
    v_target: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    config: EvaluationConfig,
) -> Estimate:
    """FQE's value: mean over episodes of v̂(x_0); the interval resamples start states, not the fit."""
    starts = np.flatnonzero(np.r_[True, np.diff(episode) > 0])
    step = np.arange(episode.size) - starts[episode]
    logged_return = np.bincount(episode, weights=config.gamma**step * reward)
    columns = np.stack([logged_return, np.asarray(v_target, dtype=np.float64)[starts]], axis=1)
    specs = {"fqe": EstimatorSpec(value_of=lambda m: m[..., 1], weights=None)}
    return bootstrapped_estimates(
        specs,
        columns,
        np.asarray(propensity, dtype=np.float64),
        config.confidence,
        config.bootstrap_samples,
        config.seed,
    )["fqe"]


def weight_histogram(w: np.ndarray, bins: int = 24) -> WeightHistogram:
    positive = w[w > 0.0]
    if positive.size == 0:
        return WeightHistogram(edges=[], counts=[], zeros=int(w.size))
    low, high = np.log10(positive.min()), np.log10(positive.max())
    edges = np.logspace(low, high if high > low else low + 1e-6, bins + 1)
    counts, edges = np.histogram(positive, bins=edges)
    return WeightHistogram(edges=edges.tolist(), counts=counts.tolist(), zeros=int(w.size - positive.size))


def dimension_summaries(
    names: list[str],
    logged: np.ndarray,
    target_mean: np.ndarray,
    target_second_moment: np.ndarray,
) -> tuple[ActionDimensionSummary, ...]:
    """Per dimension: mean/std of the logged values [N, D] vs the target's per-row mean and E[a²] [N, D]."""
    mean_t = target_mean.mean(axis=0)
    var_t = np.maximum(target_second_moment.mean(axis=0) - mean_t**2, 0.0)
    return tuple(
        ActionDimensionSummary(
            name=name,
            logged_mean=float(np.nanmean(logged[:, j])),
            target_mean=float(mean_t[j]),
            logged_std=float(np.nanstd(logged[:, j])),
            target_std=float(np.sqrt(var_t[j])),
        )
        for j, name in enumerate(names)
    )
