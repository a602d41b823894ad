"""Counterfactual estimators of a target policy's value from logged decisions.

Pure numpy on arrays, no models and no DataFrames, so every estimator can be checked against
hand-computed answers. Notation: logged propensity μ(a|x), target policy π(a|x), reward model
q̂(x, a), importance weight w = π(a_logged|x) / μ(a_logged|x).

Every estimate is reported raw and *normalized* (divided by the logged policy's value: mean
logged reward per decision for one-step, mean discounted logged return per episode for
sequential), so 1.0 reads "as good as the logged policy". Intervals are percentile bootstrap
intervals; the normalized interval resamples numerator and denominator together.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import EvaluationError

# A bootstrap chunk holds at most this many resampled indices (int64): bounds memory at ~160 MB.
_MAX_INDICES_PER_CHUNK = 20_000_000

EstimatorName = Literal["dm", "ips", "snips", "dr", "sequential_dr"]


class Estimate(BaseModel):
    """One estimator's answer with its uncertainty and the weight diagnostics that explain it."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    estimator: EstimatorName
    value: float = Field(description="estimated mean reward per decision (per episode for sequential_dr)")
    normalized: float = Field(description="value / logged policy value; 1.0 = as good as the logged policy")
    ci_low: float
    ci_high: float
    normalized_ci_low: float
    normalized_ci_high: float
    confidence: float
    bootstrap_samples: int
    n: int = Field(description="decisions (one-step) or episodes (sequential) used")
    logged_value: float = Field(description="the denominator of `normalized`")
    effective_sample_size: float | None = Field(
        description="(Σw)²/Σw² of the importance weights; None when the estimator uses none (dm)"
    )
    min_propensity: float
    max_propensity: float
    max_weight: float | None


def _bootstrap_column_means(columns: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Mean of every column on each of `n_resamples` resamples of the rows: [n_resamples, K].

    Resamples are drawn as an index matrix in chunks and turned into per-row counts with one
    bincount, so a million rows × 200 resamples needs neither a Python loop per row nor GBs.
    """
    n = columns.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, columns.shape[1]), dtype=np.float64)
    chunk = max(1, min(n_resamples, _MAX_INDICES_PER_CHUNK // max(n, 1)))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        idx += (np.arange(size) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)
        out[start : start + size] = (counts @ columns) / n
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size or finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _safe_ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(numerator, denominator)


def _check_confidence(confidence: float, bootstrap_samples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence}")
    if bootstrap_samples < 1:
        raise EvaluationError(f"bootstrap_samples must be ≥ 1, got {bootstrap_samples}")


def _logged_columns(
    target_probs: np.ndarray, logged_action: np.ndarray, logged_propensity: np.ndarray, reward: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and return (π, a, μ, r) as float64/int64 arrays."""
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
    return pi, a, mu, r


def _importance_weights(pi: np.ndarray, a: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return pi[np.arange(pi.shape[0]), a] / mu


def _effective_sample_size(w: np.ndarray) -> float:
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0.0 else 0.0


def _bootstrapped_estimates(
    specs: dict[str, tuple[int, int | None, np.ndarray | None]],
    columns: np.ndarray,
    propensity: np.ndarray,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
) -> dict[str, Estimate]:
    """Ratio estimates from one shared bootstrap of `columns` (column 0 = logged value).

    `specs` maps an estimator to (numerator column, denominator column or None, importance
    weights or None); each estimate is mean(num) / mean(den or 1), normalized by mean(col 0).
    Sharing the resamples keeps the cost of four estimators at the cost of one.
    """
    _check_confidence(confidence, bootstrap_samples)
    point = columns.mean(axis=0)
    boot = _bootstrap_column_means(columns, bootstrap_samples, seed)
    out: dict[str, Estimate] = {}
    for name, (num, den, weights) in specs.items():
        value = float(_safe_ratio(point[num], 1.0 if den is None else point[den]))
        boot_value = _safe_ratio(boot[:, num], 1.0 if den is None else boot[:, den])
        ci_low, ci_high = _interval(boot_value, confidence)
        n_low, n_high = _interval(_safe_ratio(boot_value, boot[:, 0]), confidence)
        out[name] = Estimate(
            estimator=name,
            value=value,
            normalized=float(_safe_ratio(value, point[0])),
            ci_low=ci_low,
            ci_high=ci_high,
            normalized_ci_low=n_low,
            normalized_ci_high=n_high,
            confidence=confidence,
            bootstrap_samples=bootstrap_samples,
            n=int(columns.shape[0]),
            logged_value=float(point[0]),
            effective_sample_size=None if weights is None else _effective_sample_size(weights),
            min_propensity=float(propensity.min()),
            max_propensity=float(propensity.max()),
            max_weight=None if weights is None else float(weights.max()),
        )
    return out


_ONE_STEP_COLUMNS = {"dm": (1, None), "ips": (2, None), "snips": (2, 3), "dr": (4, None)}


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
) -> dict[str, Estimate]:
    """Columns [r, Σπq̂, w·r, w, DR term] for one shared bootstrap; q̂ may be None for IPS/SNIPS."""
    pi, a, mu, r = _logged_columns(target_probs, logged_action, logged_propensity, reward)
    w = _importance_weights(pi, a, mu)
    if q_hat is None:
        dm = dr = np.zeros_like(r)
    else:
        q = np.asarray(q_hat, dtype=np.float64)
        if q.shape != pi.shape:
            raise EvaluationError(f"q_hat {q.shape} must have the shape of target_probs {pi.shape}")
        dm = np.sum(pi * q, axis=1)
        dr = dm + w * (r - q[np.arange(pi.shape[0]), a])
    columns = np.stack([r, dm, w * r, w, dr], axis=1)
    specs = {
        name: (_ONE_STEP_COLUMNS[name][0], _ONE_STEP_COLUMNS[name][1], None if name == "dm" else w)
        for name in names
    }
    return _bootstrapped_estimates(specs, columns, mu, confidence, bootstrap_samples, seed)


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
) -> dict[str, Estimate]:
    """DM, IPS, SNIPS and DR together on one shared bootstrap (the cost of one estimator)."""
    args = (target_probs, q_hat, logged_action, logged_propensity, reward)
    return _one_step(("dm", "ips", "snips", "dr"), *args, confidence, bootstrap_samples, seed)


def sequential_doubly_robust(
    episode_index: np.ndarray,
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> tuple[Estimate, np.ndarray]:
    """Sequential DR (Jiang & Li 2016) per episode; returns (estimate, per-episode values).

    Rows must be grouped by episode and ordered by step within it; `episode_index` gives each
    row's episode as 0..E-1 (non-decreasing). With cumulative weights w_t = Π_{k≤t} π_k/μ_k
    (w_{-1} = 1) and v̂(x) = Σ_a π(a|x) q̂(x,a), an episode's value is
        Σ_t γ^t [ w_t (r_t − q̂(x_t, a_t)) + w_{t−1} v̂(x_t) ],
    the unrolled form of V_t = v̂(x_t) + ρ_t (r_t + γ V_{t+1} − q̂(x_t, a_t)).
    """
    pi, a, mu, r = _logged_columns(target_probs, logged_action, logged_propensity, reward)
    q = np.asarray(q_hat, dtype=np.float64)
    ep = np.asarray(episode_index, dtype=np.int64)
    n = pi.shape[0]
    if q.shape != pi.shape:
        raise EvaluationError(f"q_hat {q.shape} must have the shape of target_probs {pi.shape}")
    if ep.shape != (n,):
        raise EvaluationError(f"episode_index must have shape ({n},), got {ep.shape}")
    if not 0.0 <= gamma <= 1.0:
        raise EvaluationError(f"gamma must be in [0, 1], got {gamma}")
    steps = np.diff(ep)
    if ep[0] != 0 or np.any(steps < 0) or np.any(steps > 1):
        raise EvaluationError(
            "episode_index must be 0..E-1, grouped and non-decreasing (sort rows by episode, step)"
        )
    n_episodes = int(ep[-1]) + 1

    starts = np.flatnonzero(np.r_[True, steps > 0])  # first row of each episode
    step = np.arange(n) - starts[ep]
    rho = _importance_weights(pi, a, mu)
    # Cumulative product of ρ within each episode, in log space with exact zeros counted apart.
    positive = rho > 0.0
    log_rho = np.where(positive, np.log(np.where(positive, rho, 1.0)), 0.0)
    cum_log = np.cumsum(log_rho)
    cum_zero = np.cumsum(~positive)
    base_log = (cum_log - log_rho)[starts][ep]
    base_zero = (cum_zero - ~positive)[starts][ep]
    w = np.where(cum_zero - base_zero == 0, np.exp(cum_log - base_log), 0.0)
    w_prev = np.where(step == 0, 1.0, np.r_[1.0, w[:-1]])

    rows = np.arange(n)
    v_hat = np.sum(pi * q, axis=1)
    discount = gamma**step
    term = discount * (w * (r - q[rows, a]) + w_prev * v_hat)
    values = np.bincount(ep, weights=term, minlength=n_episodes)
    logged_return = np.bincount(ep, weights=discount * r, minlength=n_episodes)

    ends = np.r_[starts[1:], n] - 1
    episode_weight = w[ends]
    columns = np.stack([logged_return, values], axis=1)
    specs = {"sequential_dr": (1, None, episode_weight)}
    estimate = _bootstrapped_estimates(specs, columns, mu, confidence, bootstrap_samples, seed)[
        "sequential_dr"
    ]
    return estimate.model_copy(update={"max_weight": float(w.max())}), values
