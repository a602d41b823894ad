"""High-confidence bounds: known answers for the t-test and empirical Bernstein bounds, their coverage
over seeded trials (binomial band from scipy), how they compare, and the errors they raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from evaluation.bounds import (
    BoundMethod,
    HighConfidenceBound,
    empirical_bernstein_lower_bound,
    high_confidence_bounds,
    t_test_lower_bound,
)
from evaluation.errors import EvaluationError


def test_t_test_known_answer() -> None:
    samples = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    # mean = 20/5 = 4; deviations −3, −2, −1, 0, 6 → squares 9 + 4 + 1 + 0 + 36 = 50;
    # s² = 50/(5 − 1) = 12.5, so s/√n = √12.5/√5 = √2.5.
    t = stats.t.ppf(0.9, df=4)
    expected = 4.0 - t * math.sqrt(2.5)
    assert t_test_lower_bound(samples, 0.9) == pytest.approx(expected, rel=1e-12)
    # The same with numpy's own mean and std, as a second route.
    by_numpy = samples.mean() - t * samples.std(ddof=1) / np.sqrt(samples.size)
    assert t_test_lower_bound(samples, 0.9) == pytest.approx(by_numpy, rel=1e-12)


def test_empirical_bernstein_known_answer() -> None:
    samples = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    # Range [0, 2], confidence 0.9 → δ = 0.1, ln(2/δ) = ln 20 = 2.995732.
    # mean = 3.0/5 = 0.6; deviations ±0.4, ±0.2, 0 → squares 0.16 + 0.04 + 0 + 0.04 + 0.16 = 0.4;
    # V = 0.4/(5 − 1) = 0.1.
    # variance term: √(2 · 0.1 · ln 20 / 5) = √(0.04 · 2.995732) = √0.1198293 = 0.346164
    # range term: 7 · (2 − 0) · ln 20 / (3 · (5 − 1)) = 14 · 2.995732 / 12 = 3.495021
    # bound: 0.6 − 0.346164 − 3.495021 = −3.241185
    log_term = math.log(20.0)
    expected = 0.6 - math.sqrt(0.04 * log_term) - 14.0 * log_term / 12.0
    assert expected == pytest.approx(-3.241185, abs=1e-6)
    assert empirical_bernstein_lower_bound(samples, 0.9, 0.0, 2.0) == pytest.approx(expected, rel=1e-12)


def test_empirical_bernstein_covers_bernoulli_mean() -> None:
    rng = np.random.default_rng(20240614)
    p, n, trials = 0.3, 200, 400
    draws = (rng.random((trials, n)) < p).astype(np.float64)
    covered = sum(empirical_bernstein_lower_bound(row, 0.95, 0.0, 1.0) <= p for row in draws)
    # A guarantee: at least 95 % of trials; being conservative it in fact covers in ~all of them.
    assert covered / trials >= 0.95


def test_t_test_covers_normal_mean_at_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    mu, n, trials, confidence = 1.5, 50, 2_000, 0.95
    draws = rng.normal(mu, 2.0, size=(trials, n))
    covered = sum(t_test_lower_bound(row, confidence) <= mu for row in draws)
    # Exact for normal data, so the count of covering trials is Binomial(2000, 0.95).
    low = stats.binom.ppf(0.0005, trials, confidence)
    high = stats.binom.ppf(0.9995, trials, confidence)
    assert low <= covered <= high, (covered, low, high)


def test_bernstein_is_more_conservative_and_much_looser_with_a_heavy_weight() -> None:
    rng = np.random.default_rng(3)
    typical = rng.random(500)  # IPS-like terms in [0, 1], moderate
    t_typical = t_test_lower_bound(typical, 0.95)
    eb_typical = empirical_bernstein_lower_bound(typical, 0.95, 0.0, 1.0)
    assert eb_typical <= t_typical

    # The same terms plus one decision whose weight is 200 (reward 1): the range grows to [0, 200].
    heavy = np.append(typical, 200.0)
    t_heavy = t_test_lower_bound(heavy, 0.95)
    eb_heavy = empirical_bernstein_lower_bound(heavy, 0.95, 0.0, 200.0)
    assert eb_heavy <= t_heavy
    assert t_heavy - eb_heavy > 20 * (t_typical - eb_typical)
    assert eb_heavy < 0.0 < t_heavy  # Bernstein says nothing useful any more (terms are ≥ 0)


def test_high_confidence_bounds_fields_for_costs() -> None:
    costs = np.array([-1.5, -2.5, -1.0, -3.0, -2.0, -1.8])
    logged = -2.0
    bounds = high_confidence_bounds(costs, estimator="ips", logged_value=logged, confidence=0.9)
    assert set(bounds) == {BoundMethod.T_TEST, BoundMethod.EMPIRICAL_BERNSTEIN}

    t_bound = bounds[BoundMethod.T_TEST]
    t_expected = costs.mean() - stats.t.ppf(0.9, df=5) * costs.std(ddof=1) / math.sqrt(6)
    assert t_bound.lower == pytest.approx(t_expected, rel=1e-12)
    assert t_bound.normalized_lower == pytest.approx(1.0 + (t_expected - logged) / 2.0, rel=1e-12)
    assert t_bound.mean == pytest.approx(-11.8 / 6)
    assert t_bound.n == 6
    assert (t_bound.range_low, t_bound.range_high, t_bound.range_source) == (None, None, None)
    assert t_bound.guaranteed is False
    assert t_bound.estimator == "ips"

    eb = bounds[BoundMethod.EMPIRICAL_BERNSTEIN]
    assert (eb.range_low, eb.range_high, eb.range_source) == (-3.0, -1.0, "observed")
    assert eb.guaranteed is False
    eb_expected = (
        costs.mean()
        - math.sqrt(2.0 * costs.var(ddof=1) * math.log(20.0) / 6)
        - 7.0 * 2.0 * math.log(20.0) / (3.0 * 5)
    )
    assert eb.lower == pytest.approx(eb_expected, rel=1e-12)
    assert eb.normalized_lower == pytest.approx(1.0 + (eb_expected + 2.0) / 2.0, rel=1e-12)
    assert "not a guarantee" in eb.description

    declared = high_confidence_bounds(
        costs, estimator="pdis", logged_value=logged, confidence=0.9, declared_range=(-5.0, 0.0)
    )[BoundMethod.EMPIRICAL_BERNSTEIN]
    assert (declared.range_low, declared.range_high, declared.range_source) == (-5.0, 0.0, "declared")
    assert declared.guaranteed is True
    assert declared.estimator == "pdis"
    assert declared.lower < eb.lower  # the declared range is wider than the observed one


def test_constant_terms_with_observed_range_bound_at_the_mean() -> None:
    bounds = high_confidence_bounds(np.full(10, 0.4), estimator="ips", logged_value=0.5, confidence=0.95)
    for bound in bounds.values():
        assert bound.lower == pytest.approx(0.4)
        assert bound.normalized_lower == pytest.approx(0.8)


def test_bound_round_trips_through_json() -> None:
    bound = high_confidence_bounds(
        np.array([0.0, 1.0, 2.0]), estimator="ips", logged_value=0.0, confidence=0.95
    )[BoundMethod.T_TEST]
    assert bound.normalized_lower == -math.inf  # logged value 0: relative change undefined, kept as −inf
    assert HighConfidenceBound.model_validate_json(bound.model_dump_json()) == bound


@pytest.mark.parametrize(
    ("samples", "kwargs", "message"),
    [
        (np.array([1.0]), {}, "at least 2 samples"),
        (np.array([1.0, np.nan, 2.0, np.inf]), {}, "2 of 4 samples are not finite"),
        (np.array([1.0, np.nan, 2.0, np.inf]), {}, "indices [1, 3]"),
        (np.array([1.0, 2.0]), {"confidence": 1.0}, "must be in (0, 1), got 1.0"),
        (np.array([1.0, 2.0]), {"confidence": 0.0}, "must be in (0, 1), got 0.0"),
        (np.array([1.0, 2.0]), {"declared_range": (1.0, 1.0)}, "low < high, got [1.0, 1.0]"),
        (np.array([1.0, 2.0]), {"declared_range": (3.0, 0.0)}, "low < high, got [3.0, 0.0]"),
        (
            np.array([0.5, 7.0, 0.2, -1.0]),
            {"declared_range": (0.0, 1.0)},
            "2 of 4 samples lie outside the declared range [0.0, 1.0], first at indices [1, 3] "
            "with values [7.0, -1.0]",
        ),
    ],
)
def test_errors_name_what_is_wrong(samples: np.ndarray, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"estimator": "ips", "logged_value": 1.0, "confidence": 0.95} | kwargs
    with pytest.raises(EvaluationError) as caught:
        high_confidence_bounds(samples, **args)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert str(caught.value).startswith("ips bound samples")  # says which estimator's terms


def test_bare_functions_reject_bad_input() -> None:
    with pytest.raises(EvaluationError, match="outside the declared range"):
        empirical_bernstein_lower_bound(np.array([0.0, 2.0]), 0.95, 0.0, 1.0)
    with pytest.raises(EvaluationError, match=r"must be in \(0, 1\)"):
        t_test_lower_bound(np.array([0.0, 2.0]), 1.5)
    with pytest.raises(EvaluationError, match="1-D array"):
        t_test_lower_bound(np.ones((2, 2)), 0.9)


def test_a_declared_range_out_of_order_is_a_config_error() -> None:
    from pydantic import ValidationError

    from evaluation import EvaluationConfig

    with pytest.raises(
        ValidationError, match=r"bound_term_range must be \[low, high\] with low < high, got \[3.0, 1.0\]"
    ):
        EvaluationConfig(bound_term_range=(3.0, 1.0))
    assert EvaluationConfig(bound_term_range=(-1.0, 5.0)).bound_term_range == (-1.0, 5.0)
