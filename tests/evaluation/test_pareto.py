"""The Pareto k̂ of importance weights (`evaluation.pareto`): known generalized Pareto shapes, light
tails, agreement with arviz-stats, weights that take few values, and the thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.pareto import (
    _fit_shape,
    bootstrap_pareto_k_threshold,
    pareto_k,
    pareto_k_threshold,
    tail_size,
)


def _generalized_pareto(shape: float, n: int, seed: int) -> np.ndarray:
    """Inverse-CDF draws of a generalized Pareto with scale 1 and shape ξ (> 0: heavy tail)."""
    u = np.random.default_rng(seed).random(n)
    return np.expm1(-shape * np.log1p(-u)) / shape


@pytest.mark.parametrize("shape", [0.2, 0.9])
def test_k_hat_recovers_a_known_generalized_pareto_shape(shape: float) -> None:
    # n = 10,000: the fit uses the M = 300 largest draws. The maximum-likelihood shape estimate has
    # standard deviation ≈ (1 + ξ)/√M (Smith 1985): 0.069 at ξ = 0.2, 0.110 at 0.9; the prior toward
    # 0.5, worth 10 of the 310 observations, moves it by at most 10/310·|0.5 − ξ| = 0.013.
    n = 10_000
    m = tail_size(n)
    assert m == 300
    sd = (1.0 + shape) / math.sqrt(m)
    prior_pull = 10.0 / (m + 10.0) * abs(0.5 - shape)
    estimates = np.array([pareto_k(np.log(_generalized_pareto(shape, n, seed))) for seed in range(10)])
    # Each fit within 3 standard deviations; their mean within 3 standard errors of the ten.
    assert np.all(np.abs(estimates - shape) < 3.0 * sd + prior_pull), estimates
    assert abs(estimates.mean() - shape) < 3.0 * sd / math.sqrt(estimates.size) + prior_pull, estimates


def test_light_tailed_weights_have_k_hat_below_one_half() -> None:
    # uniform(0.5, 1.5) is bounded: a generalized Pareto shape of −1 at its upper end.
    for seed in range(5):
        w = np.random.default_rng(seed).uniform(0.5, 1.5, 10_000)
        k = pareto_k(np.log(w))
        assert k is not None and k < 0.0, k


@pytest.mark.parametrize(
    ("seed", "sigma", "n", "arviz_k"),
    [
        (0, 1.0, 900, 0.35829906789378924),
        (1, 2.0, 900, 0.7420665128107719),
        (2, 1.5, 3600, 0.41239332902857934),
        (3, 3.0, 10000, 1.0003980290846086),
    ],
)
def test_k_hat_matches_arviz_stats_on_lognormal_weights(
    seed: int, sigma: float, n: int, arviz_k: float
) -> None:
    """Reference values from arviz-stats 0.8.0, `array_stats.psislw(-log_w)[1]` (it takes
    log-likelihoods). ArviZ takes ⌊3√n⌋ tail draws and loo ⌈3√n⌉; these n make 3√n whole."""
    log_w = np.random.default_rng(seed).normal(scale=sigma, size=n)
    assert pareto_k(log_w) == pytest.approx(arviz_k, abs=1e-12)


def test_k_hat_does_not_depend_on_the_scale_of_the_weights() -> None:
    log_w = np.random.default_rng(7).normal(scale=2.0, size=2000)
    k = pareto_k(log_w)
    # Cumulative weights over long episodes leave float64: only their logs are at hand.
    assert pareto_k(log_w + 1500.0) == pytest.approx(k, abs=1e-9)
    assert pareto_k(log_w - 1500.0) == pytest.approx(k, abs=1e-9)
    with_zeros = np.r_[log_w, np.full(50, -np.inf)]  # weight-0 episodes sit below the tail
    assert pareto_k(with_zeros) == pytest.approx(pareto_k(np.r_[log_w, np.full(50, log_w.min() - 1.0)]))


def test_weights_with_few_values_have_no_tail() -> None:
    rng = np.random.default_rng(3)
    # A few atoms (one-step π/μ of discrete actions; short episodes of them): no Pareto tail.
    atoms = np.log(rng.choice([0.2, 1.0, 1.8, 3.6], size=5000, p=[0.3, 0.5, 0.15, 0.05]))
    assert pareto_k(atoms) is None
    assert pareto_k(np.zeros(1000)) is None  # every weight equal
    assert pareto_k(np.log(rng.uniform(size=20))) is None  # fewer than 5 draws in the tail


def test_weights_tied_with_the_cutoff_are_left_out_of_the_tail() -> None:
    # 80 weights of 1 + a generalized Pareto excess above 920 weights of exactly 1: the M = 95 largest
    # hold 15 ties with the cutoff, whose excesses of exactly 0 would distort the fit (on CartPole's
    # per-step weights, products of four ratios, they sent k̂ to 18). The fit is the 80 excesses'.
    excess = np.sort(_generalized_pareto(0.3, 80, seed=4))
    weights = np.r_[np.ones(920), 1.0 + excess]
    assert tail_size(weights.size) == 95
    assert pareto_k(np.log(weights)) == pytest.approx(_fit_shape(excess), abs=1e-12)
    # With ties spread through the tail (a lattice of products of four ratios), the fit agrees with
    # the one on the same weights moved apart by a millionth, once they take a few hundred values.
    rng = np.random.default_rng(3)
    steps = rng.choice(np.log([0.54, 0.58, 1.18, 2.08]), size=(1000, 60), p=[0.2, 0.3, 0.3, 0.2])
    lattice = np.cumsum(steps, axis=1)
    for t in (10, 20, 30, 59):
        apart = lattice[:, t] + rng.normal(scale=1e-6, size=1000)
        assert pareto_k(lattice[:, t]) == pytest.approx(pareto_k(apart), abs=0.05), t


def test_thresholds() -> None:
    assert pareto_k_threshold(1000) == pytest.approx(2.0 / 3.0)
    assert pareto_k_threshold(100_000) == 0.7  # the paper's cap
    assert pareto_k_threshold(10) == -math.inf
    # Unsmoothed estimates with bootstrap intervals need a finite variance: 1/2 from 100 samples on.
    assert bootstrap_pareto_k_threshold(1000) == 0.5
    assert bootstrap_pareto_k_threshold(100) == 0.5
    assert bootstrap_pareto_k_threshold(50) == pytest.approx(1.0 - 1.0 / math.log10(50))
