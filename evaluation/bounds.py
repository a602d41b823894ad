"""High-confidence lower bounds on a target policy's value, besides the bootstrap.

Both bounds take the per-sample terms of an importance-weighted estimator, whose mean is the
estimate: per decision w_i·r_i for IPS, per episode Σ_t γ^t w_t r_t for PDIS. They bound the
expected value of one term (the policy's value) from below, one-sided, at `confidence`.

- **t-test** (`t_test_lower_bound`): mean − t_{n−1, confidence}·s/√n. Assumes the mean of the
  terms is close to normal (central limit theorem), so it is approximate: tight and fine with
  many samples and moderate weights, optimistic when a few heavy weights make the terms skewed.
- **Empirical Bernstein** (`empirical_bernstein_lower_bound`, Maurer & Pontil 2009, Theorem 4;
  the bound HCOPE, Thomas et al. 2015, builds on): holds with probability ≥ confidence for any
  distribution of independent terms within a range [a, b], so it is a guarantee when the range
  is *declared* from what the terms can be (rewards and weight caps). It is conservative and
  grows very loose when weights are heavy, since its last term scales with b − a. With the
  *observed* range [min, max] it is the practical variant SCOPE-RL and OBP offer: no longer a
  guarantee, since a larger unseen term would break the range.

Prefer the t-test when samples are many and weights moderate (it is the sharper check), the
declared-range Bernstein bound when the gate must hold with the stated probability whatever
the distribution, accepting that it approves fewer candidates.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from evaluation.errors import EvaluationError
from evaluation.estimators import relative_to_logged
from evaluation.sequential import cumulative_weights

# How many offending indices (and values) an error message lists.
_SHOWN = 5


class BoundMethod(StrEnum):
    T_TEST = "t_test"
    EMPIRICAL_BERNSTEIN = "empirical_bernstein"


class HighConfidenceBound(BaseModel):
    """One-sided lower bound of an estimator's per-sample mean, with what it assumes."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    method: BoundMethod
    estimator: str = Field(description="estimator whose per-sample terms are bounded, e.g. 'ips' or 'pdis'")
    confidence: float = Field(description="probability (nominal for the t-test) that the bound holds")
    lower: float = Field(description="one-sided lower bound of the mean term (the policy's value)")
    normalized_lower: float = Field(
        description="1 + (lower − logged)/|logged|, the normalization of `Estimate.normalized`"
    )
    mean: float = Field(description="mean of the terms: the estimator's point estimate")
    n: int = Field(description="number of terms: decisions (IPS) or episodes (PDIS)")
    range_low: float | None = Field(description="lower end of the range the Bernstein bound assumed")
    range_high: float | None = Field(description="upper end of that range; None for the t-test")
    range_source: Literal["declared", "observed"] | None = Field(
        description="'declared' by the caller or 'observed' min/max of the terms; None for the t-test"
    )
    guaranteed: bool = Field(
        description="True only for empirical Bernstein with a declared range: holds whatever the distribution"
    )
    description: str = Field(description="what the bound assumes, in one sentence")


def t_test_lower_bound(samples: np.ndarray, confidence: float) -> float:
    """One-sided Student-t lower bound of the mean: mean − t_{n−1, confidence}·s/√n (s with ddof=1).

    Approximate: exact only for normal terms, otherwise it leans on the central limit theorem.
    """
    x = _checked_samples(samples)
    _check_confidence(confidence)
    n = x.size
    t = float(stats.t.ppf(confidence, df=n - 1))
    return float(x.mean() - t * x.std(ddof=1) / math.sqrt(n))


def empirical_bernstein_lower_bound(samples: np.ndarray, confidence: float, low: float, high: float) -> float:
    """Empirical Bernstein lower bound of the mean of independent terms in [low, high].

    Maurer & Pontil (2009), "Empirical Bernstein Bounds and Sample Variance Penalization",
    Theorem 4 (as used by Thomas et al. 2015, "High Confidence Off-Policy Evaluation"): with
    probability at least 1 − δ, δ = 1 − confidence,

        E[X] ≥ mean − sqrt(2·V·ln(2/δ)/n) − 7·(high − low)·ln(2/δ)/(3·(n − 1)),

    where V is the unbiased sample variance (the theorem's [0, 1] case rescaled to [low, high]).
    Samples outside [low, high] are an error: the bound says nothing about them.
    """
    x = _checked_samples(samples)
    _check_confidence(confidence)
    _check_range(x, low, high)
    return _bernstein_lower(x, confidence, low, high)


def high_confidence_bounds(
    samples: np.ndarray,
    *,
    estimator: str,
    logged_value: float,
    confidence: float,
    declared_range: tuple[float, float] | None = None,
) -> dict[BoundMethod, HighConfidenceBound]:
    """Both lower bounds for the per-sample terms of an importance-weighted estimator.

    `samples`: one term per decision (IPS: w_i·r_i) or per episode (PDIS: Σ_t γ^t w_t r_t).
    `logged_value` is the logged policy's value, the denominator of `normalized_lower`.
    `declared_range` (low, high) is what the terms can be, e.g. [min reward, max weight · max
    reward] for IPS with capped weights; it makes the Bernstein bound a guarantee. Without it
    the Bernstein bound assumes the observed [min, max] and is not one.
    """
    x = _checked_samples(samples, estimator)
    _check_confidence(confidence, estimator)
    if not math.isfinite(logged_value):
        raise EvaluationError(
            f"logged_value for the {estimator} bounds must be finite, got {logged_value}", column=estimator
        )
    mean = float(x.mean())
    n = int(x.size)

    t_lower = t_test_lower_bound(x, confidence)
    t_bound = HighConfidenceBound(
        method=BoundMethod.T_TEST,
        estimator=estimator,
        confidence=confidence,
        lower=t_lower,
        normalized_lower=float(relative_to_logged(t_lower, logged_value)),
        mean=mean,
        n=n,
        range_low=None,
        range_high=None,
        range_source=None,
        guaranteed=False,
        description=(
            "One-sided Student-t bound: approximate, it assumes the mean of the terms is near normal "
            "(central limit theorem) and is optimistic when a few heavy weights skew them."
        ),
    )

    if declared_range is not None:
        low, high = (float(v) for v in declared_range)
        _check_range(x, low, high, estimator)
        source: Literal["declared", "observed"] = "declared"
        description = (
            f"Empirical Bernstein bound (Maurer & Pontil 2009, Thm 4): holds with probability "
            f"≥ {confidence} for any independent terms in the declared range [{low:g}, {high:g}]."
        )
    else:
        # Constant terms give low == high: both penalties vanish and the bound is the mean.
        low, high = float(x.min()), float(x.max())
        source = "observed"
        description = (
            f"Empirical Bernstein bound assuming the terms lie in their observed range [{low:g}, {high:g}]: "
            "the practical variant of SCOPE-RL/OBP, not a guarantee, as a larger unseen term breaks it."
        )
    eb_lower = _bernstein_lower(x, confidence, low, high)
    eb_bound = HighConfidenceBound(
        method=BoundMethod.EMPIRICAL_BERNSTEIN,
        estimator=estimator,
        confidence=confidence,
        lower=eb_lower,
        normalized_lower=float(relative_to_logged(eb_lower, logged_value)),
        mean=mean,
        n=n,
        range_low=low,
        range_high=high,
        range_source=source,
        guaranteed=source == "declared",
        description=description,
    )
    return {BoundMethod.T_TEST: t_bound, BoundMethod.EMPIRICAL_BERNSTEIN: eb_bound}


def _bernstein_lower(x: np.ndarray, confidence: float, low: float, high: float) -> float:
    n = x.size
    log_term = math.log(2.0 / (1.0 - confidence))
    variance = float(x.var(ddof=1))
    return float(
        x.mean() - math.sqrt(2.0 * variance * log_term / n) - 7.0 * (high - low) * log_term / (3.0 * (n - 1))
    )


# --- validation ----------------------------------------------------------------------------------
def _where(estimator: str | None) -> str:
    return "high-confidence bound samples" if estimator is None else f"{estimator} bound samples"


def _checked_samples(samples: np.ndarray, estimator: str | None = None) -> np.ndarray:
    """The samples as a 1-D float64 array with at least 2 entries, all finite."""
    x = np.asarray(samples, dtype=np.float64)
    where = _where(estimator)
    if x.ndim != 1:
        raise EvaluationError(
            f"{where} must be a 1-D array of per-sample terms, got shape {x.shape}", column=estimator
        )
    if x.size < 2:
        raise EvaluationError(
            f"{where}: need at least 2 samples for a variance, got {x.size}", column=estimator
        )
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        shown = bad[:_SHOWN].tolist()
        raise EvaluationError(
            f"{where}: {bad.size} of {x.size} samples are not finite (NaN or ±inf), first at indices "
            f"{shown}; expected finite per-sample terms (check the weights for overflow)",
            column=estimator,
            rows=[str(i) for i in shown],
        )
    return x


def _check_confidence(confidence: float, estimator: str | None = None) -> None:
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(
            f"{_where(estimator)}: confidence must be in (0, 1), got {confidence}", column=estimator
        )


def _check_range(x: np.ndarray, low: float, high: float, estimator: str | None = None) -> None:
    where = _where(estimator)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise EvaluationError(
            f"{where}: declared range must be finite with low < high, got [{low}, {high}]", column=estimator
        )
    outside = np.flatnonzero((x < low) | (x > high))
    if outside.size:
        shown = outside[:_SHOWN].tolist()
        values = [float(v) for v in x[shown]]
        raise EvaluationError(
            f"{where}: {outside.size} of {x.size} samples lie outside the declared range [{low}, {high}], "
            f"first at indices {shown} with values {values}; widen the range to what the terms can be "
            "(e.g. max weight · max reward) or cap the weights",
            column=estimator,
            rows=[str(i) for i in shown],
        )


# --- a two-sided interval that holds whatever the weights' tail ----------------------------------
# Truncation levels c_k = unit · 2^k for k < _TRUNCATION_LEVELS, fixed before seeing the weights
# (unit: a term's largest value were every cumulative weight at most 1) and tried under a union
# bound: the largest is 32,768 units, and the union costs ln(16) inside each Bernstein log term.
_TRUNCATION_LEVELS = 16


def truncated_is_interval(
    episode: np.ndarray,
    weights: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    confidence: float,
    reward_range: tuple[float, float],
) -> tuple[float, float]:
    """A two-sided interval on the target's value that holds with probability ≥ `confidence` for any
    distribution of the importance weights, given rewards within `reward_range` and target episodes
    no longer than the longest logged one (H decisions). Per episode (discounted return) when
    episodes have several decisions; pass one episode per decision for a per-decision value.

    Per-decision importance sampling over episodes padded to H steps with reward 0 after their end,
    the cumulative weight frozen at the last decision's (its expectation under the logged policy is
    the target's probability of having ended by then). With a = min(low, 0), b = max(high, 0) and
    S = Σ_{t<H} γ^t, the terms X_e = Σ_t γ^t w_t (r_t − a) and Y_e = Σ_t γ^t w_t (b − r_t) are
    non-negative with means V − a·S and b·S − V. Truncating a non-negative term at c only lowers its
    mean, so the empirical Bernstein lower bound of min(X, c) on [0, c] (Maurer & Pontil 2009,
    Thm 4) bounds E[X] from below: the truncated bound of HCOPE (Thomas, Theocharous &
    Ghavamzadeh 2015). Each side takes the best of `_TRUNCATION_LEVELS` levels under a union
    bound at (1 − confidence)/2, so the interval assumes nothing about the weights' tail. It is
    what to report when the weights are too heavy for a bootstrap; it is wide, and not for
    approving anything. `episode`: 0..E−1, rows grouped by episode in step order.
    """
    w = np.asarray(weights, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    ep = np.asarray(episode, dtype=np.int64)
    where = "truncated importance-sampling interval"
    _check_confidence(confidence, where)
    low, high = (float(v) for v in reward_range)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise EvaluationError(f"{where}: reward_range must be finite with low ≤ high, got [{low}, {high}]")
    outside = np.flatnonzero((r < low) | (r > high))
    if outside.size:
        shown = outside[:_SHOWN].tolist()
        raise EvaluationError(
            f"{where}: {outside.size} rewards lie outside the reward range [{low}, {high}], first at rows "
            f"{shown} with values {[float(v) for v in r[shown]]}; declare a range that holds every reward",
            rows=[str(i) for i in shown],
        )
    a, b = min(low, 0.0), max(high, 0.0)
    starts = np.flatnonzero(np.r_[True, np.diff(ep) > 0])
    lengths = np.diff(np.r_[starts, ep.size])
    step = np.arange(ep.size) - np.repeat(starts, lengths)
    horizon = int(lengths.max())
    discount = gamma ** np.arange(horizon, dtype=np.float64)
    total = float(discount.sum())
    if a == b:  # every reward is 0, and so is the value
        return 0.0, 0.0
    cum_w = cumulative_weights(ep, w, starts)
    # Σ_{t=L}^{H−1} γ^t for an episode of L decisions: its padded steps
    padded = np.r_[np.cumsum(discount[::-1])[::-1], 0.0][lengths]
    with np.errstate(invalid="ignore"):  # an overflowed weight of an episode with no padded steps
        frozen = np.where(padded == 0.0, 0.0, cum_w[starts + lengths - 1] * padded)
    unit = (b - a) * total
    x = _episode_terms(ep, cum_w, discount[step] * (r - a), frozen * (0.0 - a))
    y = _episode_terms(ep, cum_w, discount[step] * (b - r), frozen * b)
    side = 1.0 - (1.0 - confidence) / 2.0
    return a * total + _truncated_lower(x, side, unit), b * total - _truncated_lower(y, side, unit)


def _episode_terms(
    ep: np.ndarray, cum_w: np.ndarray, row_part: np.ndarray, padding: np.ndarray
) -> np.ndarray:
    """Σ over an episode's rows of cum_w·row_part, plus its padding: each ≥ 0, +inf where a weight overflowed."""
    with np.errstate(over="ignore", invalid="ignore"):
        rows = np.where(row_part == 0.0, 0.0, cum_w * row_part)
        pad = np.where(padding == 0.0, 0.0, padding)  # 0·inf: an overflowed weight times no reward
        return np.bincount(ep, weights=rows, minlength=pad.size) + pad


def _truncated_lower(terms: np.ndarray, confidence: float, unit: float) -> float:
    """Lower bound (≥ 0) of E[X] for non-negative X, holding with probability ≥ `confidence`: the best
    Bernstein bound of min(X, c) over the fixed levels c = unit·2^k, each at its share of 1 − confidence."""
    if terms.size < 2:
        return 0.0
    level_confidence = 1.0 - (1.0 - confidence) / _TRUNCATION_LEVELS
    best = 0.0
    for k in range(_TRUNCATION_LEVELS):
        c = unit * 2.0**k
        best = max(best, _bernstein_lower(np.minimum(terms, c), level_confidence, 0.0, c))
    return best
