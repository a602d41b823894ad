"""One-step counterfactual estimators of a target policy's value from logged decisions.

Pure numpy on arrays, no models and no DataFrames, so every estimator can be checked against
hand-computed answers. Notation: logged propensity μ(a|x), target policy π(a|x), reward model
q̂(x, a), importance weight w = π(a_logged|x) / μ(a_logged|x).

Every estimate is reported raw and *normalized* against the logged policy's value L (mean
logged reward per decision for one-step, mean discounted logged return per episode for
sequential): normalized = 1 + (V − L)/|L|, which is V/L when L > 0 and keeps "above 1.0 =
better than the logged policy" when rewards are costs (L < 0), so 1.0 reads "as good as the
logged policy" either way. Each estimator is a function of
column means, so all of them share one bootstrap of the rows: percentile intervals for the
value and for the normalized value (numerator and denominator resampled together).

An estimator that cannot be computed for the data by design (PDIS when its cumulative weights
exceed float64 over long episodes) is reported with `available=False`, its numbers None and a
warning saying why, never as a NaN that reads like a corrupt input (`mark_unavailable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluation.errors import EvaluationError
from evaluation.pareto import pareto_k

# A bootstrap chunk holds at most this many resampled indices (int64): bounds memory at ~160 MB.
_MAX_INDICES_PER_CHUNK = 20_000_000
# Fewer samples than this (decisions, or episodes for sequential estimators): the bootstrap
# interval is not to be trusted and the estimate is marked unreliable.
TINY_SAMPLE = 30

EstimatorName = Literal[
    "dm",
    "ips",
    "snips",
    "dr",
    "sndr",
    "switch_dr",
    "pdis",
    "sequential_dr",
    "wdr",
    "magic",
    "fqe",
    # Continuous actions: the same estimators on kernel-smoothed weights (`evaluation.kernel`).
    "kernel_ips",
    "kernel_snips",
    "kernel_dr",
    "kernel_sndr",
    "kernel_switch_dr",
    "kernel_pdis",
    "kernel_sequential_dr",
    "kernel_wdr",
    "kernel_magic",
]
ONE_STEP_ESTIMATORS: tuple[EstimatorName, ...] = ("dm", "ips", "snips", "dr", "sndr", "switch_dr")
# The numbers an unavailable estimate leaves out (None).
_ESTIMATE_NUMBERS = ("value", "normalized", "ci_low", "ci_high", "normalized_ci_low", "normalized_ci_high")


class Estimate(BaseModel):
    """One estimator's answer with its uncertainty and the weight diagnostics that explain it.

    `available` False: the estimator cannot be computed for these data by design (e.g. PDIS whose
    cumulative weights exceed float64 over long episodes); the six numbers are then None and the
    first warning says why. Otherwise they are all set (possibly non-finite on bad input)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1, 2, 3] = 3  # 2: pareto_k; 3: interval
    estimator: EstimatorName
    available: bool = Field(True, description="False when the estimator cannot be computed for these data")
    value: float | None = Field(
        description="estimated mean reward per decision (per episode for sequential ones); None if unavailable"
    )
    normalized: float | None = Field(
        description="1 + (value − logged)/|logged| (= value/logged for a positive logged value); "
        "1.0 = as good as the logged policy"
    )
    ci_low: float | None
    ci_high: float | None
    normalized_ci_low: float | None
    normalized_ci_high: float | None
    confidence: float
    bootstrap_samples: int
    n: int = Field(description="decisions (one-step) or episodes (sequential) used")
    logged_value: float = Field(description="the denominator of `normalized`")
    effective_sample_size: float | None = Field(
        description="(Σw)²/Σw² of the importance weights; None when the estimator uses none (dm, fqe)"
    )
    min_propensity: float = Field(description="smallest logged propensity (a density for continuous actions)")
    max_propensity: float
    max_weight: float | None = Field(
        description="largest importance weight; None when the estimator uses none or it exceeds float64"
    )
    max_log_weight: float | None = Field(
        None, description="log of the largest cumulative weight (sequential), finite where max_weight is not"
    )
    clipped_share: float | None = Field(
        None, description="share of decisions whose weight exceeded the switch threshold (switch_dr); else 0"
    )
    pareto_k: float | None = Field(
        None,
        description="Pareto k̂ of the importance weights it relies on (`evaluation.pareto`: per decision for "
        "one-step estimates, the episodes' final cumulative weights for sequential ones; switch_dr: the kept "
        "weights; magic: the weights of the deepest j-step return its blend uses). Above 1/2 their variance is "
        "infinite and the estimate is marked unreliable. None when it uses no weights, the weights have no tail "
        "to fit (a few distinct values at the top, fewer than 25 samples), or in reports written before it",
    )
    interval: Literal["bootstrap", "truncated_is"] = Field(
        "bootstrap",
        description="how [ci_low, ci_high] was made: 'bootstrap', percentiles of resamples (models refitted), "
        "widened for the effective sample size by Student's t; 'truncated_is', the report's unreliable headline: "
        "a two-sided truncated importance-sampling Bernstein interval that holds whatever the weights' tail "
        "(`evaluation.bounds.truncated_is_interval`)",
    )
    reliable: bool = True
    warnings: list[str] = Field(default_factory=list, description="why the estimate is not to be trusted")

    @model_validator(mode="after")
    def _numbers_match_availability(self) -> Self:
        numbers = {name: getattr(self, name) for name in _ESTIMATE_NUMBERS}
        missing = [name for name, v in numbers.items() if v is None]
        if self.available and missing:
            raise ValueError(f"estimate {self.estimator} is available but {missing} are None")
        if not self.available and len(missing) < len(numbers):
            raise ValueError(f"estimate {self.estimator} is unavailable, so {list(numbers)} must all be None")
        if not self.available and (self.reliable or not self.warnings):
            raise ValueError(f"estimate {self.estimator} is unavailable: it must be unreliable and say why")
        return self


# --- shared bootstrap -------------------------------------------------------------------------
def bootstrap_counts(n: int, n_resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first resample, counts [size, n]) chunks: how often each of `n` rows is drawn per resample.

    Resamples are drawn as an index matrix in chunks and turned into per-row counts with one
    bincount, so a million rows × 200 resamples needs neither a Python loop per row nor GBs.
    The same `seed` gives the same resamples as `bootstrap_column_means`.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _MAX_INDICES_PER_CHUNK // max(n, 1)))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        idx += (np.arange(size) * n)[:, None]
        yield start, np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)


def bootstrap_column_means(columns: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Mean of every column on each of `n_resamples` resamples of the rows: [n_resamples, K]."""
    n = columns.shape[0]
    out = np.empty((n_resamples, columns.shape[1]), dtype=np.float64)
    for start, counts in bootstrap_counts(n, n_resamples, seed):
        out[start : start + counts.shape[0]] = (counts @ columns) / n
    return out


def interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval; NaN when any resample is not finite (never a silently narrowed one)."""
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size or finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def safe_ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.divide(numerator, denominator)


def relative_to_logged(value: np.ndarray | float, logged: np.ndarray | float) -> np.ndarray:
    """1 + (value − logged)/|logged|: value/logged for logged > 0, still "> 1 = better" for logged < 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return 1.0 + np.divide(np.subtract(value, logged), np.abs(logged))


def check_confidence(confidence: float, bootstrap_samples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence}")
    if bootstrap_samples < 1:
        raise EvaluationError(f"bootstrap_samples must be ≥ 1, got {bootstrap_samples}")


def logged_columns(
    target_probs: np.ndarray, logged_action: np.ndarray, logged_propensity: np.ndarray, reward: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes, action indices, propensities in (0, 1] and finite rewards; return (π, a, μ, r)."""
    pi = np.asarray(target_probs, dtype=np.float64)
    a = np.asarray(logged_action, dtype=np.int64)
    mu = np.asarray(logged_propensity, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    if pi.ndim != 2:
        raise EvaluationError(f"target_probs must be [N, A], got shape {pi.shape}")
    n, n_actions = pi.shape
    if n == 0:
        raise EvaluationError("no decisions to evaluate (N = 0)")
    for name, arr in (("logged_action", a), ("logged_propensity", mu), ("reward", r)):
        if arr.shape != (n,):
            raise EvaluationError(f"{name} must have shape ({n},) to match target_probs, got {arr.shape}")
    if a.min() < 0 or a.max() >= n_actions:
        raise EvaluationError(
            f"logged_action indices must be in [0, {n_actions}), got [{a.min()}, {a.max()}]"
        )
    bad = np.flatnonzero(~((mu > 0.0) & (mu <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        raise EvaluationError(
            f"logged_propensity must be in (0, 1] for every decision; {bad.size} are not, e.g. rows "
            f"{bad[:5].tolist()} = {mu[bad[:5]].tolist()}"
        )
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise EvaluationError(f"reward must be finite; {bad.size} are not, e.g. rows {bad[:5].tolist()}")
    bad = np.flatnonzero(
        ~np.all(np.isfinite(pi) & (pi >= 0.0), axis=1) | (np.abs(pi.sum(axis=1) - 1.0) > 1e-3)
    )
    if bad.size:
        raise EvaluationError(
            f"target_probs must be finite, ≥ 0 and sum to 1 per row; {bad.size} rows are not, e.g. rows "
            f"{bad[:5].tolist()}"
        )
    return pi, a, mu, r


def importance_weights(pi: np.ndarray, a: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return pi[np.arange(pi.shape[0]), a] / mu


def _log(w: np.ndarray) -> np.ndarray:
    """log w, −inf for zero weights (and for the NaN/negative ones callers reject before)."""
    positive = w > 0.0
    return np.where(positive, np.log(np.where(positive, w, 1.0)), -np.inf)


def effective_sample_size(w: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.sum(w * w))
        total = float(np.sum(w))
    return total**2 / sq if sq > 0.0 and math.isfinite(sq) else (0.0 if sq == 0.0 else math.nan)


@dataclass(frozen=True, slots=True)
class EstimatorSpec:
    """How one estimator reads the shared bootstrap: value = `value_of(column means)`."""

    value_of: Callable[[np.ndarray], np.ndarray]
    weights: np.ndarray | None  # importance weights behind ESS / max weight; None if unweighted
    clipped_share: float | None = None
    pareto_k: float | None = None  # k̂ of the weights it relies on (`evaluation.pareto`)


def bootstrapped_estimates(
    specs: dict[str, EstimatorSpec],
    columns: np.ndarray,
    propensity: np.ndarray,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
    logged_column: int = 0,
    boot: np.ndarray | None = None,
) -> dict[str, Estimate]:
    """Estimates that are functions of column means, from one shared bootstrap of `columns`.

    `value_of` receives means as [..., K] (one row for the point estimate, one per resample);
    `logged_column` holds the logged value used for normalization; `boot` reuses resampled
    means already drawn from `columns` with the same seed. Sharing the resamples
    keeps the cost of every estimator at the cost of one.
    """
    check_confidence(confidence, bootstrap_samples)
    point = columns.mean(axis=0)
    if boot is None:
        boot = bootstrap_column_means(columns, bootstrap_samples, seed)
    n = int(columns.shape[0])
    out: dict[str, Estimate] = {}
    for name, spec in specs.items():
        with np.errstate(all="ignore"):
            value = float(spec.value_of(point))
            boot_value = np.asarray(spec.value_of(boot), dtype=np.float64)
        ci_low, ci_high = interval(boot_value, confidence)
        n_low, n_high = interval(relative_to_logged(boot_value, boot[:, logged_column]), confidence)
        weights = spec.weights
        ess = None if weights is None else effective_sample_size(weights)
        estimate = Estimate(
            estimator=name,
            value=value,
            normalized=float(relative_to_logged(value, point[logged_column])),
            ci_low=ci_low,
            ci_high=ci_high,
            normalized_ci_low=n_low,
            normalized_ci_high=n_high,
            confidence=confidence,
            bootstrap_samples=bootstrap_samples,
            n=n,
            logged_value=float(point[logged_column]),
            effective_sample_size=ess,
            min_propensity=float(propensity.min()),
            max_propensity=float(propensity.max()),
            max_weight=None if weights is None else float(weights.max()),
            clipped_share=None if weights is None else (spec.clipped_share or 0.0),
            pareto_k=spec.pareto_k,
        )
        out[name] = mark_reliability(estimate)
    return out


def mark_reliability(estimate: Estimate) -> Estimate:
    """Flag what makes an estimate untrustworthy instead of returning a silent number."""
    warnings = list(estimate.warnings)
    numbers = (estimate.value, estimate.ci_low, estimate.ci_high)
    if estimate.available and not all(v is not None and math.isfinite(v) for v in numbers):
        warnings.append(f"{estimate.estimator}: the value or its interval is not finite")
    if estimate.n < TINY_SAMPLE:
        warnings.append(
            f"{estimate.estimator}: only {estimate.n} samples (< {TINY_SAMPLE}); the interval is not meaningful"
        )
    if not abs(estimate.logged_value) > 0.0:  # NaN fails too
        warnings.append(
            f"{estimate.estimator}: the logged value is {estimate.logged_value:.4g}, "
            "so the normalized value is meaningless"
        )
    ess = estimate.effective_sample_size
    if ess is not None and not (math.isfinite(ess) and ess >= 1.0):
        warnings.append(
            f"{estimate.estimator}: effective sample size {ess:.3g} < 1: the target policy never "
            "takes the logged actions"
        )
    return estimate.model_copy(update={"warnings": warnings, "reliable": not warnings})


def mark_unavailable(estimate: Estimate, reason: str) -> Estimate:
    """The estimate as not computable for these data: numbers None, `reason` its first warning.

    For estimators whose arithmetic cannot hold the answer by design (weights beyond float64), so
    that a report tells "not computable for this horizon" apart from a NaN caused by bad input.
    The other warnings are recomputed (`mark_reliability`), dropping the "not finite" one.
    """
    fields = estimate.model_dump()
    fields.update(dict.fromkeys(_ESTIMATE_NUMBERS), available=False, warnings=[reason], reliable=False)
    return mark_reliability(Estimate.model_validate(fields))


# --- one-step estimators ----------------------------------------------------------------------
# Columns of the one-step bootstrap: r, Σπq̂, w·r, w, w·(r − q̂), w·(r − q̂)·1{w ≤ τ}.
ONE_STEP_VALUE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "dm": lambda m: m[..., 1],
    "ips": lambda m: m[..., 2],
    "snips": lambda m: m[..., 2] / m[..., 3],
    "dr": lambda m: m[..., 1] + m[..., 4],
    "sndr": lambda m: m[..., 1] + m[..., 4] / m[..., 3],
    "switch_dr": lambda m: m[..., 1] + m[..., 5],
}


def _one_step(
    names: tuple[str, ...],
    target_probs: np.ndarray,
    q_hat: np.ndarray | None,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
    switch_threshold: float = 10.0,
) -> dict[str, Estimate]:
    pi, a, mu, r = logged_columns(target_probs, logged_action, logged_propensity, reward)
    w = importance_weights(pi, a, mu)
    if q_hat is None:
        if any(name in ("dm", "dr", "sndr", "switch_dr") for name in names):
            raise EvaluationError(f"estimators {names} need a reward model q_hat; got None")
        dm = q_logged = None
    else:
        q = np.asarray(q_hat, dtype=np.float64)
        if q.shape != pi.shape:
            raise EvaluationError(f"q_hat {q.shape} must have the shape of target_probs {pi.shape}")
        if not np.all(np.isfinite(q)):
            raise EvaluationError("q_hat has non-finite values; check the reward model's inputs")
        dm = np.sum(pi * q, axis=1)
        q_logged = q[np.arange(pi.shape[0]), a]
    return weighted_one_step_estimates(
        names, w, dm, q_logged, r, mu, confidence, bootstrap_samples, seed, switch_threshold
    )


def weighted_one_step_estimates(
    names: tuple[str, ...],
    weights: np.ndarray,
    dm: np.ndarray | None,
    q_logged: np.ndarray | None,
    reward: np.ndarray,
    propensity: np.ndarray,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
    switch_threshold: float = 10.0,
) -> dict[str, Estimate]:
    """The one-step estimators from per-decision pieces, whatever the action kind made them from.

    `weights` w_i (π/μ of the logged action; kernel-smoothed for continuous actions), `dm` the
    model value under the target E_π q̂(x_i, ·), `q_logged` q̂(x_i, a_i), `propensity` the logged
    μ (diagnostics only). `dm`/`q_logged` may be None for IPS and SNIPS only.
    """
    if not switch_threshold > 0.0:
        raise EvaluationError(f"switch_threshold must be > 0, got {switch_threshold}")
    w = np.asarray(weights, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    if dm is None or q_logged is None:
        dm = residual = np.zeros_like(r)
    else:
        residual = w * (r - np.asarray(q_logged, dtype=np.float64))
        dm = np.asarray(dm, dtype=np.float64)
    kept = w <= switch_threshold
    columns = np.stack([r, dm, w * r, w, residual, residual * kept], axis=1)
    tails = {
        "dm": None,
        "switch_dr": pareto_k(_log(w * kept)) if "switch_dr" in names else None,  # the weights it keeps
        **dict.fromkeys(("ips", "snips", "dr", "sndr"), pareto_k(_log(w))),
    }
    specs = {
        name: EstimatorSpec(
            value_of=ONE_STEP_VALUE[name],
            weights=None if name == "dm" else w,
            clipped_share=float(np.mean(~kept)) if name == "switch_dr" else 0.0,
            pareto_k=tails[name],
        )
        for name in names
    }
    return bootstrapped_estimates(
        specs, columns, np.asarray(propensity, dtype=np.float64), confidence, bootstrap_samples, seed
    )


def direct_method(
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """DM = mean Σ_a π(a|x) q̂(x,a): low variance, biased exactly as much as the reward model.

    The logged arrays are only used for the normalization and diagnostics.
    """
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(("dm",), *args, confidence, bootstrap_samples, seed)["dm"]


def ips(
    target_probs: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """IPS = mean (π/μ)·r: unbiased when propensities are right, high variance when weights are large."""
    args = (target_probs, None, logged_action, logged_propensity, reward)
    return _one_step(("ips",), *args, confidence, bootstrap_samples, seed)["ips"]


def snips(
    target_probs: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """SNIPS = Σ (π/μ) r / Σ (π/μ): self-normalized IPS, slightly biased, much lower variance."""
    args = (target_probs, None, logged_action, logged_propensity, reward)
    return _one_step(("snips",), *args, confidence, bootstrap_samples, seed)["snips"]


def doubly_robust(
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """DR = DM + mean (π/μ)(r − q̂(x, a_logged)): unbiased if either propensities or q̂ are right."""
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(("dr",), *args, confidence, bootstrap_samples, seed)["dr"]


def self_normalized_doubly_robust(
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """SNDR = DM + Σ w (r − q̂) / Σ w: DR whose correction is self-normalized, tamer with large weights."""
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(("sndr",), *args, confidence, bootstrap_samples, seed)["sndr"]


def switch_doubly_robust(
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    switch_threshold: float = 10.0,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> Estimate:
    """Switch-DR (Wang et al. 2017) = DM + mean w (r − q̂) 1{w ≤ τ}: trusts the model where weights explode.

    `clipped_share` reports the share of decisions whose correction was switched off.
    """
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(("switch_dr",), *args, confidence, bootstrap_samples, seed, switch_threshold)[
        "switch_dr"
    ]


def one_step_estimates(
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
    switch_threshold: float = 10.0,
    names: tuple[str, ...] = ONE_STEP_ESTIMATORS,
) -> dict[str, Estimate]:
    """DM, IPS, SNIPS, DR, SNDR and switch-DR together on one shared bootstrap (the cost of one)."""
    unknown = [n for n in names if n not in ONE_STEP_VALUE]
    if unknown:
        raise EvaluationError(f"unknown one-step estimators {unknown}; choose from {list(ONE_STEP_VALUE)}")
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(tuple(names), *args, confidence, bootstrap_samples, seed, switch_threshold)
