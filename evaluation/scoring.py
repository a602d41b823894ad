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
from scipy import stats

from contracts import KIND_COLUMNS, ActionKind
from evaluation.bounds import HighConfidenceBound, high_confidence_bounds, truncated_is_interval
from evaluation.config import EvaluationConfig
from evaluation.errors import EvaluationError
from evaluation.estimators import (
    ONE_STEP_ESTIMATORS,
    TINY_SAMPLE,
    Estimate,
    EstimatorSpec,
    bootstrapped_estimates,
    relative_to_logged,
    weighted_one_step_estimates,
)
from evaluation.fqe import FqeFit
from evaluation.intervals import RefitBootstrap, refit_bootstrap
from evaluation.joint_models import JointDesign, cross_fit_joint_reward_model, joint_fitted_q_evaluation
from evaluation.kernel import KernelSmoothing
from evaluation.pareto import bootstrap_pareto_k_threshold
from evaluation.refit import LinearDesign
from evaluation.report import (
    ActionDimensionSummary,
    ActionSummary,
    CpeReport,
    WeightHistogram,
    describe_verdict,
)
from evaluation.reward_model import RewardModelFit
from evaluation.sequential import cumulative_weights, weighted_sequential_estimates

# Importance-weighted estimators without a model term, and the effective sample size, as a share of
# their samples, below which their bootstrap interval undercovers (benchmarks/cpe_coverage.py:
# PDIS at 5 % covered 80 %, at 24 % 95 %; one seed at 10.5 % missed).
_PURE_IMPORTANCE = ("ips", "snips", "pdis")
# FQE is confirmed only by a weighted check over steps carrying at least this share of Σ γ^t.
_MIN_CHECKED_HORIZON = 0.5
_MIN_ESS_SHARE = 0.2
COMMON_COLUMNS = ("mdp_id", "sequence_number_ordinal", "state_features", "reward", "model_version")
_ROWS_NAMED = 5


@dataclass(frozen=True, slots=True)
class ScoredDecisions:
    """Per-decision inputs of every estimator, rows sorted by (mdp_id, sequence_number_ordinal).

    `weights` π/μ of the logged action (kernel-smoothed for continuous actions); `propensity` the
    logged μ (a probability, or a density for continuous actions; diagnostics only);
    `reward_logged`/`reward_target` the cross-fitted immediate-reward model q̂(x, a_logged) and
    E_π q̂(x, ·); `q_logged`/`v_target` the same for FQE's long-term Q^π; `design` what both
    models regress on, so the intervals can refit them (`evaluation.refit`). `prefix` names
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
    design: LinearDesign
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
        design=LinearDesign.joint(design.logged, design.target, episode, reward),
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
    boot = refit_bootstrap(scored.design, w, scored.q_logged, scored.v_target, config)
    estimates = {
        key: _with_refit_interval(e, _base_name(key, scored.prefix), boot, config)
        for key, e in estimates.items()
    }

    max_length = int(np.bincount(episode).max())
    problem = config.problem if config.problem != "auto" else ("multi_step" if max_length > 1 else "one_step")
    estimates = _mark_trust(estimates, boot, problem, max_length, scored.prefix, config)
    estimates = _mark_missing_tails(estimates, episode, w, scored.prefix)
    headline_name, headline_reason = _choose_headline(estimates, problem, max_length, scored.prefix, config)
    estimates[headline_name] = _guaranteed_if_unreliable(
        estimates[headline_name], episode, w, reward, len(frame), config
    )
    bounds = _high_confidence_bounds(episode, w, reward, problem, scored.prefix, config)

    logged_value = float(reward.mean())
    warnings: list[str] = []
    if len(frame) < config.min_rows:
        warnings.append(f"only {len(frame)} decisions, fewer than min_rows={config.min_rows}")
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
        headline_reason=headline_reason,
        problem=problem,
        max_episode_length=max_length,
        bounds=bounds,
        reward_model=scored.reward_fit,
        fqe=scored.fqe_fit,
        actions=list(scored.actions),
        action_dimensions=list(scored.action_dimensions),
        kernel=scored.kernel,
        weight_histogram=weight_histogram(w),
        reliable=reliable,
        warnings=warnings,
        verdict=describe_verdict(
            model_version,
            headline.logged_value,
            headline,
            reliable,
            warnings,
            "mean reward per decision"
            if headline.n == len(frame)
            else f"return per episode (γ = {config.gamma})",
        ),
        data_start=None if timestamps is None else timestamps.min().to_pydatetime(),
        data_end=None if timestamps is None else timestamps.max().to_pydatetime(),
    )


def _base_name(key: str, prefix: str) -> str:
    return key[len(prefix) :] if prefix and key.startswith(prefix) else key


def _with_refit_interval(
    estimate: Estimate, base: str, boot: RefitBootstrap, config: EvaluationConfig
) -> Estimate:
    """The estimate with the refit bootstrap's intervals (MAGIC: also its refit-blend value)."""
    if not estimate.available:
        return estimate
    low, high, n_low, n_high = boot.replicates[base].intervals(config.confidence)
    update: dict[str, object] = {}
    if base == "magic":
        update.update(
            value=boot.magic_value,
            normalized=boot.magic_normalized,
            effective_sample_size=boot.magic_effective_sample_size,
            pareto_k=boot.magic_pareto_k,
        )
    refit = estimate.model_copy(update=update)
    factor = small_sample_factor(refit.effective_sample_size, refit.n, config.confidence)
    with np.errstate(invalid="ignore"):
        low, high = _widened(refit.value, low, high, factor)
        n_low, n_high = _widened(refit.normalized, n_low, n_high, factor)
    refit = refit.model_copy(
        update={"ci_low": low, "ci_high": high, "normalized_ci_low": n_low, "normalized_ci_high": n_high}
    )
    numbers = (refit.value, refit.ci_low, refit.ci_high)
    not_finite = f"{estimate.estimator}: the value or its interval is not finite"
    if not all(np.isfinite(v) for v in numbers) and not_finite not in refit.warnings:
        refit = refit.model_copy(update={"warnings": [*refit.warnings, not_finite], "reliable": False})
    return refit


def small_sample_factor(effective_sample_size: float | None, n: int, confidence: float) -> float:
    """t_{ν}/z at the interval's two-sided level, ν = effective sample size − 1 (n − 1 without weights).

    A percentile interval is as wide as a normal one, z standard errors each side, but its standard
    error comes from the data at hand: with ESS effective samples that error is itself estimated
    from about ESS values, and Student's t with ESS − 1 degrees of freedom is the width that
    accounts for it (the Kish effective sample size as the degrees of freedom). It is under 1 %
    wider from ESS 200 on, 4 % at ESS 30: it matters where the weights leave few effective samples."""
    ess = effective_sample_size if effective_sample_size is not None else float(n)
    if not np.isfinite(ess) or ess <= 1.0:
        return 1.0  # nothing to widen: such an estimate is flagged unreliable (TINY_SAMPLE)
    two_sided = 1.0 - (1.0 - confidence) / 2.0
    return float(stats.t.ppf(two_sided, df=ess - 1.0) / stats.norm.ppf(two_sided))


def _widened(value: float | None, low: float, high: float, factor: float) -> tuple[float, float]:
    """The percentile interval with each side's distance from the point estimate scaled by `factor`
    (never narrowed; a side the point lies beyond stays as it is)."""
    if value is None or factor == 1.0:
        return low, high
    return float(min(low, value - factor * (value - low))), float(max(high, value + factor * (high - value)))


def _guaranteed_if_unreliable(
    estimate: Estimate,
    episode: np.ndarray,
    w: np.ndarray,
    reward: np.ndarray,
    n_decisions: int,
    config: EvaluationConfig,
) -> Estimate:
    """The headline as is when reliable; otherwise with the interval that holds whatever the weights
    (`truncated_is_interval`) instead of its bootstrap, which cannot be trusted to cover there; rewards
    are assumed within `evaluation.reward_range`, or the logged rewards' range when it is not set."""
    if estimate.reliable or not estimate.available:
        return estimate
    per_decision = estimate.n == n_decisions
    declared = config.reward_range
    reward_range = declared if declared is not None else (float(reward.min()), float(reward.max()))
    low, high = truncated_is_interval(
        np.arange(n_decisions) if per_decision else episode,
        w,
        reward,
        config.gamma,
        config.confidence,
        reward_range,
    )
    return estimate.model_copy(
        update={
            "ci_low": low,
            "ci_high": high,
            "normalized_ci_low": float(relative_to_logged(low, estimate.logged_value)),
            "normalized_ci_high": float(relative_to_logged(high, estimate.logged_value)),
            "interval": "truncated_is",
        }
    )


def _warn(estimate: Estimate, message: str) -> Estimate:
    return estimate.model_copy(update={"warnings": [*estimate.warnings, message], "reliable": False})


def _model_check(
    model: Estimate,
    name: str,
    check_name: str,
    boot: RefitBootstrap,
    check_base: str,
    model_base: str,
    pct: int,
    confidence: float,
) -> str | None:
    """Why a model-based estimate is not to be trusted, or None (`_unconfirmed` against `check_name`)."""
    difference = boot.replicates[check_base].values - boot.replicates[model_base].values
    if not np.all(np.isfinite(difference)):
        return (
            f"{name}: the model cannot be checked against {check_name} on these data ({check_name} is not finite on "
            "every resample), so its interval, which cannot hold the model's bias, is not to be trusted"
        )
    return _unconfirmed(model, name, f"{check_name} − {name}", difference, pct, confidence)


def _unconfirmed(
    model: Estimate, name: str, check: str, difference: np.ndarray, pct: int, confidence: float
) -> str | None:
    """None when the model's bias, bounded by the interval of `difference` (an importance-weighted
    check minus the model, over the same resamples), fits in the model's own half-width; else why not."""
    low, high = (float(v) for v in np.quantile(difference, [(1 - confidence) / 2, (1 + confidence) / 2]))
    half_width = (model.ci_high - model.ci_low) / 2.0
    bound = max(abs(low), abs(high))
    if bound <= half_width:
        return None
    return (
        f"{name}: the data do not confirm its model: {check} is {low:.4g} to {high:.4g} ({pct}% interval), so its "
        f"bias may reach {bound:.4g}, more than its own interval's half-width {half_width:.4g}, which holds the "
        "model's variance but not its bias"
    )


def _mark_missing_tails(
    estimates: dict[str, Estimate], episode: np.ndarray, w: np.ndarray, prefix: str
) -> dict[str, Estimate]:
    """Importance weights average 1 in expectation (E_μ[π/μ] = 1, per step and per episode). When
    their sample mean sits more than 3 standard errors from 1, the decisions the target policy
    favours most are missing from the logs: plain importance sampling is then off by that much, and
    its interval, built from the same logs, cannot show it (a notification seed at α = 1 in
    benchmarks/cpe_coverage.py: final weights averaging 0.68 ± 0.02, PDIS 17 % low with ESS 836 of
    2,000). Flags ips/snips (per-decision weights) and pdis (per-episode cumulative weights)."""
    starts = np.flatnonzero(np.r_[True, np.diff(episode) > 0])
    ends = np.r_[starts[1:], episode.size] - 1
    with np.errstate(over="ignore", invalid="ignore"):
        final = cumulative_weights(episode, w, starts)[ends]
    out = dict(estimates)
    for base, weights, what in (
        ("ips", w, "per-decision"),
        ("snips", w, "per-decision"),
        ("pdis", final, "final per-episode"),
    ):
        key = f"{prefix}{base}"
        estimate = out.get(key)
        if estimate is None or not estimate.available or weights.size < 2 or not np.all(np.isfinite(weights)):
            continue
        mean = float(weights.mean())
        se = float(weights.std(ddof=1) / np.sqrt(weights.size))
        if abs(mean - 1.0) > 3.0 * se:
            out[key] = _warn(
                estimate,
                f"{key}: the {what} importance weights average {mean:.3f} (± {se:.3f}), not 1: the decisions "
                "the target policy favours most are missing from the logs, so the estimate is biased and its "
                "interval cannot show it",
            )
    return out


def _fqe_check(
    fqe: Estimate, key: str, boot: RefitBootstrap, max_length: int, config: EvaluationConfig
) -> str | None:
    """Why FQE is not to be trusted, or None. Its bias, bounded by the interval of weighted DR over
    the first steps (where the weights are light) minus FQE itself, must fit in its own half-width;
    and those steps must carry at least half the discounted horizon (CartPole at α = 1 in
    benchmarks/cpe_coverage.py: a 5-of-60-step check passed FQE in 4 seeds, which all missed)."""
    confidence = config.confidence
    pct = int(round(confidence * 100))
    short = boot.short_horizon
    if short is None:
        return (
            f"{key}: cannot be checked: the importance weights are too heavy from the first step on, so no "
            "weighted estimate can confirm the model, and its interval cannot hold the model's bias"
        )
    discount = config.gamma ** np.arange(max_length)
    share = float(discount[: short.steps].sum() / discount.sum())
    if share < _MIN_CHECKED_HORIZON:
        return (
            f"{key}: cannot be checked: the importance weights stay light only over the first {short.steps} of up to "
            f"{max_length} steps, which carry {share:.0%} of the discounted horizon, so the data cannot confirm the "
            "model over the rest, and its interval cannot hold the model's bias"
        )
    difference = short.differences
    if not np.all(np.isfinite(difference)):
        return f"{key}: cannot be checked: weighted DR over the first {short.steps} steps is not finite on every resample"
    check = (
        f"over the first {short.steps} steps (weights' effective sample size {short.effective_sample_size:.0f}), "
        f"weighted DR − {key}"
    )
    return _unconfirmed(fqe, key, check, difference, pct, confidence)


def _mark_trust(
    estimates: dict[str, Estimate],
    boot: RefitBootstrap,
    problem: str,
    max_length: int,
    prefix: str,
    config: EvaluationConfig,
) -> dict[str, Estimate]:
    """Flag estimates whose interval cannot be trusted to cover, each with why (issue: CPE you can trust):
    one-step estimates of a multi-step problem, model-based ones the data do not confirm, and
    importance-weighted ones whose weights are too heavy for a bootstrap."""
    pct = int(round(config.confidence * 100))
    out = dict(estimates)
    for key, estimate in estimates.items():
        if not estimate.available:
            continue
        base = _base_name(key, prefix)
        if problem == "multi_step" and base in (*ONE_STEP_ESTIMATORS,):
            estimate = _warn(
                estimate,
                f"{key}: values one decision under the logged policy's states, but episodes here have up to "
                f"{max_length} decisions and a decision may change the states that follow; use a sequential "
                "estimate, or set evaluation.problem: one_step if decisions do not affect later states",
            )
        ess = estimate.effective_sample_size
        if (
            base in _PURE_IMPORTANCE
            and ess is not None
            and np.isfinite(ess)
            and ess < _MIN_ESS_SHARE * estimate.n
        ):
            estimate = _warn(
                estimate,
                f"{key}: effective sample size {ess:.1f} is under {_MIN_ESS_SHARE:.0%} of its {estimate.n} samples: "
                "without a model to steady it, a few heavy weights make its sampling distribution skewed, and "
                "the bootstrap interval undercovers (80 % for a nominal 95 % in benchmarks/cpe_coverage.py)",
            )
        elif base != "magic" and ess is not None and np.isfinite(ess) and 1.0 <= ess < TINY_SAMPLE:
            estimate = _warn(
                estimate,
                f"{key}: effective sample size {ess:.1f} < {TINY_SAMPLE}: a few heavy importance weights decide the "
                "value, and a bootstrap interval cannot cover that reliably",
            )
        why = _heavy_tail(estimate, key, base)
        estimate = _warn(estimate, why) if why else estimate
        if base == "dm" and problem == "one_step":
            why = _model_check(estimate, key, f"{prefix}dr", boot, "dr", "dm", pct, config.confidence)
            estimate = _warn(estimate, why) if why else estimate
        if base == "fqe":
            why = _fqe_check(estimate, key, boot, max_length, config)
            estimate = _warn(estimate, why) if why else estimate
        out[key] = estimate
    # MAGIC borrows from FQE's long-term model wherever that lowers its variance; when the data do
    # not confirm FQE, the bias it borrows is not in MAGIC's interval (CartPole in
    # benchmarks/cpe_coverage.py: FQE 12 % low, MAGIC covered 62 % at α = 0.1).
    fqe, magic = out.get("fqe"), out.get(f"{prefix}magic")
    if fqe is not None and magic is not None and magic.available and not fqe.reliable:
        out[f"{prefix}magic"] = _warn(
            magic,
            f"{prefix}magic: blends in returns that lean on FQE, which is not to be trusted here ({fqe.warnings[0]}), "
            "so its interval may not hold the bias it borrows",
        )
    return out


def _heavy_tail(estimate: Estimate, key: str, base: str) -> str | None:
    """Why the weights' tail makes the interval untrustworthy, or None: Pareto k̂ above
    `bootstrap_pareto_k_threshold` (1/2 from 100 samples on; `evaluation.pareto`). The effective
    sample size cannot see this: CartPole's WDR at α = 0.5 in benchmarks/cpe_coverage.py missed in 3
    of the 13 seeds whose ESS cleared 30, all high, with k̂ of its final weights 0.43–1.19 over the
    seeds (median 0.84)."""
    k = estimate.pareto_k
    limit = bootstrap_pareto_k_threshold(estimate.n)
    if k is None or not k > limit:
        return None
    samples = "decisions" if base in ONE_STEP_ESTIMATORS else "episodes"
    default = "per-decision" if samples == "decisions" else "episodes' cumulative"
    weights = {
        "magic": "cumulative importance weights of the deepest steps its blend uses",
        "switch_dr": "importance weights it keeps (at most the switch threshold)",
    }.get(base, f"{default} importance weights")
    return (
        f"{key}: the {weights} are too heavy-tailed to trust (Pareto k̂ = {k:.2f} > {limit:.2f}): their variance "
        f"is infinite, so a few of the {estimate.n} {samples} decide the value and heavier weights not yet logged "
        "would move it; a bootstrap interval cannot show that, and the effective sample size, computed from the "
        "same weights, overstates what they support"
    )


def _high_confidence_bounds(
    episode: np.ndarray,
    w: np.ndarray,
    reward: np.ndarray,
    problem: str,
    prefix: str,
    config: EvaluationConfig,
) -> list[HighConfidenceBound]:
    """t-test and empirical-Bernstein lower bounds on the importance-weighted terms: w·r per decision
    (one-step problems) or Σ_t γ^t w_t r_t per episode (multi-step); none when those overflow float64."""
    if problem == "one_step":
        name, terms, logged = f"{prefix}ips", w * reward, float(reward.mean())
    else:
        starts = np.flatnonzero(np.r_[True, np.diff(episode) > 0])
        step = np.arange(episode.size) - starts[episode]
        discount = config.gamma**step
        with np.errstate(over="ignore", invalid="ignore"):
            terms = np.bincount(episode, weights=discount * cumulative_weights(episode, w, starts) * reward)
        name, logged = f"{prefix}pdis", float(np.bincount(episode, weights=discount * reward).mean())
    if terms.size < 2 or not np.all(np.isfinite(terms)):
        return []
    found = high_confidence_bounds(
        terms,
        estimator=name,
        logged_value=logged,
        confidence=config.confidence,
        declared_range=config.bound_term_range,
    )
    return list(found.values())


def _choose_headline(
    estimates: dict[str, Estimate], problem: str, max_length: int, prefix: str, config: EvaluationConfig
) -> tuple[str, str]:
    """The estimate the gate judges, and why."""
    if config.headline != "auto":
        name = config.headline if config.headline in ("dm", "fqe") else f"{prefix}{config.headline}"
        return name, f"{name}: set by evaluation.headline in the configuration"
    if problem == "one_step":
        return f"{prefix}dr", (
            f"{prefix}dr: every episode is one decision (a bandit), so the gate judges doubly robust mean reward "
            "per decision (set evaluation.headline to override)"
        )
    sequential = (
        f"episodes have up to {max_length} decisions, so the gate judges a sequential estimate of the "
        "discounted return per episode"
    )
    fqe = estimates.get("fqe")
    if fqe is not None and fqe.reliable:
        return f"{prefix}magic", (
            f"{prefix}magic: {sequential}; the data confirm FQE, so MAGIC may blend weighted DR with it where "
            "the weights run out (set evaluation.headline to override)"
        )
    return f"{prefix}wdr", (
        f"{prefix}wdr: {sequential}; the data do not confirm FQE, so the gate judges weighted DR rather than "
        "MAGIC, which would borrow FQE's bias (set evaluation.headline to override)"
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
