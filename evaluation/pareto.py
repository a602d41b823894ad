"""How heavy the tail of a set of importance weights is: the Pareto k̂ of PSIS.

Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance Sampling" (JMLR 2024): fit a
generalized Pareto distribution to the M = ⌈min(n/5, 3√n)⌉ largest of n weights (their excesses
over the next largest); its shape k̂ estimates how many moments the weights' distribution has
(those of order < 1/k). Below k = 1/2 the weights have a finite variance and an importance-sampling
estimate obeys the central limit theorem; between 1/2 and 1 the variance is infinite and the
estimate converges more slowly, ruled by a few weights and by larger ones not yet drawn. The paper
calls a *Pareto-smoothed* estimate reliable below min(1 − 1/log10(n), 0.7). The estimators here do
not smooth, and their intervals are bootstraps, which need the finite variance: the bootstrap of
a mean is inconsistent when the variance is infinite (Athreya 1987). So an estimate is marked
unreliable above min(1 − 1/log10(n), 1/2) (`bootstrap_pareto_k_threshold`), and k̂ is reported
for every estimate that uses weights. The effective sample size (Σw)²/Σw² misses this: it is
computed from the same draws and looks fine until the draw that would ruin it arrives
(benchmarks/cpe_coverage.py, CartPole at α = 0.5: WDR's misses had ESS just above 30).

Why our own 40 lines instead of a library: the reference implementations are the R packages `loo`
and `posterior` and, in Python, ArviZ, whose array-level PSIS now lives in `arviz-stats` — a
pre-1.0 package whose entry point has moved between releases (arviz 0.x `psislw`, arviz-stats
`base.array_stats.psislw`, which takes log-likelihoods, not log-ratios), and of which the package
index here serves 0.8.0 while upstream is at 1.x: a dependency to pin and keep up with for one
function. The estimator is short: Zhang & Stephens (2009)'s empirical-Bayes fit, with the weakly
informative prior toward k = 0.5 that `loo` and ArviZ add for short tails. It is checked against
generalized Pareto draws of known shape and against arviz-stats 0.8.0 on the same tails
(tests/evaluation/test_pareto.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

# The paper's practical limit for a Pareto-*smoothed* estimate: above it unreliable at any n.
PARETO_K_MAX = 0.7
# Our limit for the plain and self-normalized importance sampling the estimators do (no smoothing)
# with a bootstrap interval: above k = 1/2 the weights' variance is infinite, so no central limit
# theorem holds at the √n rate and the bootstrap of a mean is inconsistent (Athreya 1987); the
# interval then tracks the draws at hand, not the weights not yet drawn.
BOOTSTRAP_PARETO_K_MAX = 0.5
# The tail fit needs at least this many weights in the tail (ArviZ's and loo's minimum).
_MIN_TAIL = 5
# Log weights closer than this are one value (the same product of ratios, summed in another order).
_TIE_LOG_TOLERANCE = 1e-9
# Zhang & Stephens' grid size is this plus √M; the prior is N(0.5, ·) worth this many observations.
_GRID_BASE = 30
_PRIOR_WEIGHT = 10.0
_PRIOR_K = 0.5


def pareto_k_threshold(n: int) -> float:
    """min(1 − 1/log10(n), 0.7): the paper's k̂ above which n draws are too few for a Pareto-smoothed
    estimate (0.67 at 1,000; Vehtari et al. 2024, eq. 13)."""
    if n <= 10:
        return -math.inf  # 1 − 1/log10(n) ≤ 0: no tail is light enough to trust with so few draws
    return min(1.0 - 1.0 / math.log10(n), PARETO_K_MAX)


def bootstrap_pareto_k_threshold(n: int) -> float:
    """The k̂ above which a bootstrap interval of an unsmoothed importance-weighted estimate from n
    weights is not to be trusted: min(the paper's threshold, 1/2) — 1/2 from n = 100 on."""
    return min(pareto_k_threshold(n), BOOTSTRAP_PARETO_K_MAX)


def tail_size(n: int) -> int:
    """M = ⌈min(n/5, 3√n)⌉ (the paper's, with independent draws: relative efficiency 1)."""
    return int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))


def pareto_k(log_weights: np.ndarray) -> float | None:
    """k̂ of the weights exp(`log_weights`) (log scale: cumulative weights leave float64 at long
    horizons; k̂ does not depend on their scale). −inf entries are zero weights.

    The tail is the M largest weights less those tied with the (M+1)-th (the cutoff): products of a
    few per-step ratios take few distinct values, and excesses of exactly 0 drive Zhang & Stephens'
    fit to nonsense (k̂ = 18 on CartPole's weights at some steps, 8 on the notification simulator's).
    None when fewer than 5 distinct values lie above the cutoff: no tail to fit (fewer than 25
    weights, or a few atoms at the top — one-step π/μ of discrete actions, or the notification
    simulator's 4-slot days, whose final weights take 9 values: bounded weights, no Pareto tail)."""
    lw = np.sort(np.asarray(log_weights, dtype=np.float64).ravel())
    if lw.size == 0 or np.isnan(lw).any() or np.isposinf(lw).any() or not np.isfinite(lw[-1]):
        return None
    m = tail_size(lw.size)
    if m < _MIN_TAIL or m >= lw.size:
        return None
    top, cut = lw[-1], lw[-m - 1]
    tail = lw[-m:][lw[-m:] > cut + _TIE_LOG_TOLERANCE]
    if tail.size < _MIN_TAIL or np.count_nonzero(np.diff(tail) > _TIE_LOG_TOLERANCE) + 1 < _MIN_TAIL:
        return None
    with np.errstate(under="ignore"):
        excess = np.exp(tail - top) - np.exp(cut - top)
    with np.errstate(all="ignore"):
        k = _fit_shape(excess)
    return k if math.isfinite(k) else None  # no fit (e.g. excesses too close to resolve): no k̂


def _fit_shape(x: np.ndarray) -> float:
    """Zhang & Stephens (2009) posterior-mean estimate of the generalized Pareto shape from sorted
    excesses `x` ≥ 0, in PSIS's sign (k > 0 a heavy tail; Z&S's k is its negative), then shrunk
    toward 0.5 by a prior worth 10 observations, as `loo::gpdfit(wip = TRUE)` and ArviZ do."""
    n = x.size
    grid = _GRID_BASE + int(math.sqrt(n))
    # Candidate b = −k/σ values, spread by the quartile and anchored at 1/max (their support).
    b = 1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = b / (3.0 * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.mean(np.log1p(-b[:, None] * x[None, :]), axis=1)  # the shape that maximizes given b (> 0: heavy)
    profile = n * (np.log(-b / k) - k - 1.0)  # profile log-likelihood of each b
    weights = np.exp(profile - logsumexp(profile))
    keep = weights >= 10.0 * np.finfo(np.float64).eps
    b_post = float(np.sum(b[keep] * weights[keep]) / np.sum(weights[keep]))
    shape = float(np.mean(np.log1p(-b_post * x)))
    return (n * shape + _PRIOR_WEIGHT * _PRIOR_K) / (n + _PRIOR_WEIGHT)
