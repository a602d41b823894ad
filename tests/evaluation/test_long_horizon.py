"""Sequential estimators over long episodes, where cumulative weights leave float64.

WDR and MAGIC are self-normalized per step, so they are computed exactly from log weights; PDIS and
sequential DR need the weights themselves and are reported unavailable (numbers None, a warning
saying why) when those overflow. Expected values are hand-computed: with two episodes, per-step
weights e^{α} and e^{β} give the normalized weights σ((α − β)(t + 1)) and 1 − σ(…) at step t.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from action_kind_data import continuous_timelines

from evaluation import (
    CpeReport,
    EvaluationConfig,
    GateConfig,
    KernelConfig,
    evaluate_action_samples,
    gate_model,
)
from evaluation.estimators import Estimate, bootstrap_counts, interval
from evaluation.pareto import pareto_k
from evaluation.sequential import weighted_sequential_estimates
from features import fit_normalization, frame_from_feature_maps

STEPS = 100


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity, which strict JSON does not have."""

    def refuse(token: str) -> object:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def _two_episodes(log_rho_a: float, log_rho_b: float, samples: int = 200) -> dict[str, Estimate]:
    """Episodes A and B of STEPS steps with per-step weights e^{log_rho_a}, e^{log_rho_b}; γ = 1,
    q̂ = v̂ = 0, rewards 1 (A) and 3 (B) at every step: WDR = Σ_t [s_t·1 + (1 − s_t)·3] with
    s_t = A's share of the weight at step t, and the j-step return g^(j) its first j + 1 terms."""
    episode = np.repeat([0, 1], STEPS)
    rho = np.exp(np.repeat([log_rho_a, log_rho_b], STEPS))
    reward = np.repeat([1.0, 3.0], STEPS)
    zeros = np.zeros(2 * STEPS)
    return weighted_sequential_estimates(
        episode, rho, zeros, zeros, reward, np.full(2 * STEPS, 0.5), 1.0, bootstrap_samples=samples
    )


def test_wdr_and_magic_are_exact_where_the_weights_overflow() -> None:
    # ρ = e^10 vs e^9: w_t = e^{10(t+1)} and e^{9(t+1)}, A's share σ(t + 1); w reaches e^1000 > float64.
    e = _two_episodes(10.0, 9.0)
    wdr = math.fsum(_sigmoid(k) * 1.0 + (1.0 - _sigmoid(k)) * 3.0 for k in range(1, STEPS + 1))
    assert wdr == pytest.approx(300.0 - 2.0 * (STEPS - 0.4642), abs=0.001)  # Σ σ(k) ≈ 100 − 0.4642
    assert e["wdr"].available and e["wdr"].value == pytest.approx(wdr, rel=1e-12)
    # logged returns 100 and 300 → L = 200; normalized = 1 + (WDR − 200)/200
    assert e["wdr"].normalized == pytest.approx(1.0 + (wdr - 200.0) / 200.0, rel=1e-12)
    # Resamples are {A, A} (WDR = Σ 1 = 100), {B, B} (= 300) or {A, B} (= the value): the 95 %
    # percentile interval of 200 of them runs from 100 to 300.
    assert (e["wdr"].ci_low, e["wdr"].ci_high) == pytest.approx((100.0, 300.0), rel=1e-12)
    # q̂ = 0, so the j-step returns are WDR's partial sums, increasing in j from g(−1) = 0 to WDR.
    magic = e["magic"]
    assert magic.available and 0.0 <= magic.value <= wdr + 1e-9
    assert math.isfinite(magic.ci_low) and math.isfinite(magic.ci_high)
    assert magic.max_log_weight == pytest.approx(10.0 * STEPS, rel=1e-12) and magic.max_weight is None
    for name in ("pdis", "sequential_dr"):
        assert not e[name].available and not e[name].reliable
        assert e[name].value is None and e[name].ci_low is None and e[name].normalized_ci_high is None
        assert e[name].warnings[0] == (
            f"{name}: cumulative importance weights reach exp(1000.0) over episodes of up to 100 steps "
            "(float64 ends at exp(709.8)), so the estimate overflows and cannot be computed for this "
            "horizon; wdr and magic, self-normalized per step, can"
        )
        assert e[name].logged_value == pytest.approx(200.0)
    # the weights ESS is scale-free: final weights ∝ (1, e^{−100}) → (1 + e^−100)² / (1 + e^−200) ≈ 1
    assert e["pdis"].effective_sample_size == pytest.approx(1.0, rel=1e-12)
    for estimate in e.values():
        again = Estimate.model_validate(_strict_json(estimate.model_dump_json()))
        assert again == estimate


def test_resamples_without_the_heaviest_episode_are_rescaled_exactly() -> None:
    # ρ = e^10 vs 1: at step t the weights differ by e^{10(t+1)}; past t = 74 B's weight relative to
    # A's is below e^−745 and underflows, so the resamples {B, B} need their own scale: they give 300.
    e = _two_episodes(10.0, 0.0)
    wdr = math.fsum(_sigmoid(10.0 * k) * 1.0 + (1.0 - _sigmoid(10.0 * k)) * 3.0 for k in range(1, STEPS + 1))
    assert e["wdr"].value == pytest.approx(wdr, rel=1e-12)
    assert (e["wdr"].ci_low, e["wdr"].ci_high) == pytest.approx((100.0, 300.0), rel=1e-12)
    assert e["magic"].available and math.isfinite(e["magic"].ci_high)


def test_underflowing_weights_leave_every_estimator_computable() -> None:
    # ρ = e^−10 vs e^−9: every weight underflows past step ~74, yet only their ratio matters to WDR:
    # B's share is σ(t + 1). PDIS's terms just become 0 (γ = 1): its value stays exact.
    e = _two_episodes(-10.0, -9.0)
    wdr = math.fsum((1.0 - _sigmoid(k)) * 1.0 + _sigmoid(k) * 3.0 for k in range(1, STEPS + 1))
    assert e["wdr"].value == pytest.approx(wdr, rel=1e-12)
    pdis = 0.5 * math.fsum(math.exp(-10.0 * k) + 3.0 * math.exp(-9.0 * k) for k in range(1, STEPS + 1))
    assert e["pdis"].available and e["pdis"].value == pytest.approx(pdis, rel=1e-12)
    assert e["pdis"].max_weight == pytest.approx(math.exp(-9.0), rel=1e-12)


def test_wdr_equals_the_plain_formula_when_nothing_overflows() -> None:
    """Short random episodes: WDR and its interval by the textbook formula on plain weights
    (mean_i A_it / mean_i w_it per step), on the same resamples (`bootstrap_counts`, same seed)."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 6, 60)
    episode = np.repeat(np.arange(lengths.size), lengths)
    step = np.arange(episode.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n, horizon, gamma = episode.size, int(lengths.max()), 0.9
    rho = rng.lognormal(0.0, 0.8, n)
    v_hat, q_hat, reward = rng.normal(1.0, 0.3, n), rng.normal(1.0, 0.3, n), rng.normal(1.0, 1.0, n)
    e = weighted_sequential_estimates(episode, rho, v_hat, q_hat, reward, np.full(n, 0.5), gamma, seed=3)

    w = np.zeros((lengths.size, horizon))
    a_terms, b_terms = np.zeros_like(w), np.zeros_like(w)
    for i, length in enumerate(lengths):
        rows = np.flatnonzero(episode == i)
        w[i, :length] = np.cumprod(rho[rows])
        w[i, length:] = w[i, length - 1]  # an ended episode keeps its last weight
        previous = np.r_[1.0, w[i, : length - 1]]
        a_terms[i, :length] = gamma ** step[rows] * w[i, :length] * (reward[rows] - q_hat[rows])
        b_terms[i, :length] = gamma ** step[rows] * previous * v_hat[rows]

    def plain_wdr(weight: np.ndarray) -> float:
        mean_w = weight @ w
        mean_prev = np.r_[weight.sum(), mean_w[:-1]]
        return float(np.sum((weight @ a_terms) / mean_w + (weight @ b_terms) / mean_prev))

    assert e["wdr"].value == pytest.approx(plain_wdr(np.ones(lengths.size)), rel=1e-10)
    resampled = np.array(
        [plain_wdr(c.astype(float)) for _, chunk in bootstrap_counts(lengths.size, 200, 3) for c in chunk]
    )
    assert (e["wdr"].ci_low, e["wdr"].ci_high) == pytest.approx(interval(resampled, 0.95), rel=1e-10)
    pdis = np.mean(
        [np.sum(gamma ** np.arange(k) * w[i, :k] * reward[episode == i]) for i, k in enumerate(lengths)]
    )
    assert e["pdis"].value == pytest.approx(pdis, rel=1e-10)
    # Every one of them relies on the episodes' final weights: one Pareto k̂ (`evaluation.pareto`).
    tail = pareto_k(np.log(w[:, -1]))
    assert tail is not None
    assert all(e[name].pareto_k == pytest.approx(tail, abs=1e-12) for name in e)


def test_pareto_k_of_weights_beyond_float64_comes_from_their_logs() -> None:
    # 300 episodes of 100 steps, log ρ ~ N(7, 1): final weights near e^700 to e^750, past float64
    # for the largest; k̂ depends only on their logs' sums.
    rng = np.random.default_rng(11)
    n_episodes, steps = 300, 100
    log_rho = rng.normal(7.0, 1.0, n_episodes * steps)
    episode = np.repeat(np.arange(n_episodes), steps)
    zeros = np.zeros(episode.size)
    e = weighted_sequential_estimates(
        episode, np.exp(log_rho), zeros, zeros, np.ones(episode.size), np.full(episode.size, 0.5), 1.0
    )
    assert e["wdr"].max_log_weight > 709.8 and not e["pdis"].available
    expected = pareto_k(log_rho.reshape(n_episodes, steps).sum(axis=1))
    assert expected is not None
    assert e["wdr"].pareto_k == pytest.approx(expected, abs=1e-9)


def test_a_step_no_episode_reaches_makes_wdr_and_magic_unavailable() -> None:
    # 3 two-step episodes, ρ_0 = (2, 1, .5), ρ_1 = 0 for all: mean w_1 = 0, so step 1's normalized
    # weights are 0/0. PDIS (γ = 1, rewards (1, 2, 3) then 5) = mean(2·1, 1·2, .5·3) = 5.5/3.
    episode = np.repeat([0, 1, 2], 2)
    rho = np.array([2.0, 0.0, 1.0, 0.0, 0.5, 0.0])
    reward = np.array([1.0, 5.0, 2.0, 5.0, 3.0, 5.0])
    zeros = np.zeros(6)
    e = weighted_sequential_estimates(episode, rho, zeros, zeros, reward, np.full(6, 0.5), 1.0)
    assert e["pdis"].available and e["pdis"].value == pytest.approx(5.5 / 3.0)
    for name in ("wdr", "magic"):
        assert not e[name].available and e[name].value is None
        assert (
            e[name]
            .warnings[0]
            .startswith(f"{name}: no episode keeps a positive importance weight through step 1")
        )


def test_estimate_numbers_must_match_availability() -> None:
    fields = {
        "estimator": "pdis",
        "value": 1.0,
        "normalized": 1.0,
        "ci_low": 0.5,
        "ci_high": 1.5,
        "normalized_ci_low": 0.5,
        "normalized_ci_high": 1.5,
        "confidence": 0.95,
        "bootstrap_samples": 10,
        "n": 100,
        "logged_value": 1.0,
        "effective_sample_size": 50.0,
        "min_propensity": 0.1,
        "max_propensity": 0.9,
        "max_weight": 3.0,
    }
    Estimate(**fields)
    with pytest.raises(ValueError, match="available but \\['value'\\] are None"):
        Estimate(**{**fields, "value": None})
    with pytest.raises(ValueError, match="unavailable, so"):
        Estimate(**{**fields, "available": False, "reliable": False, "warnings": ["pdis: why"]})


def _episodes_of(frame: pd.DataFrame, steps: int) -> pd.DataFrame:
    """Regroup one-step rows into episodes of `steps` consecutive decisions."""
    frame = frame.copy()
    index = np.arange(len(frame))
    frame["mdp_id"] = [f"ep{i // steps:04d}" for i in index]
    frame["sequence_number_ordinal"] = index % steps + 1
    frame["sequence_number"] = index % steps
    return frame


def _long_continuous_report(log_density: float | None) -> CpeReport:
    """12 episodes of 200 kernel-weighted steps (as on Pendulum), target 1.5x, bandwidth .3."""
    frame = _episodes_of(continuous_timelines(2400, seed=2), 200)
    if log_density is not None:
        frame["action_log_density"] = log_density
    x = np.array([s["x"] for s in frame["state_features"]])
    config = EvaluationConfig(bootstrap_samples=50, min_rows=1, kernel=KernelConfig(bandwidth=[0.3]))
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    return evaluate_action_samples(frame, (1.5 * x)[None, :, None], "m-long", config, spec, ["a"])


@pytest.fixture(scope="module")
def uniform_density_report() -> CpeReport:
    """Logged densities as logged (1/4 on [−2, 2]): cumulative weights stay within e^{±2}."""
    return _long_continuous_report(None)


@pytest.mark.parametrize(
    ("log_density", "overflow"),
    [(12.0, False), (-20.0, True)],
    ids=["weights-underflow", "weights-overflow"],
)
def test_200_step_continuous_episodes_gate_on_the_headline(
    uniform_density_report: CpeReport, log_density: float, overflow: bool
) -> None:
    """The same episodes with every logged density claimed at e^{12} (log ρ ≈ −11 per step: every
    weight underflows) or e^{−20} (≈ +9 per step: they overflow). A density that is the same for
    every decision scales every episode's weight at step t alike, so WDR and MAGIC must equal their
    values under the true density; PDIS/SeqDR are unavailable only when the weights overflow, and
    that never blocks the gate."""
    report = _long_continuous_report(log_density)
    # log ρ = log φ(u) − log h − log density, u = (1.5x − a)/h: the cumulative log weights by hand
    frame = _episodes_of(continuous_timelines(2400, seed=2), 200)
    x = np.array([s["x"] for s in frame["state_features"]])
    a = np.array([v[0] for v in frame["action_vector"]])
    u = (1.5 * x - a) / 0.3
    log_rho = -0.5 * u**2 - math.log(0.3 * math.sqrt(2.0 * math.pi)) - log_density
    cumulative = np.cumsum(log_rho.reshape(12, 200), axis=1)
    if overflow:
        assert cumulative.max() > 709.8  # float64 holds at most e^709.78
        assert report.estimates["kernel_wdr"].max_log_weight == pytest.approx(cumulative.max(), rel=1e-9)
    else:
        assert cumulative[:, -1].max() < -745.2  # below the smallest subnormal: every final weight is 0.0
    for name in ("kernel_wdr", "kernel_magic"):
        e, reference = report.estimates[name], uniform_density_report.estimates[name]
        assert e.available and reference.available, e.warnings
        for field in ("value", "ci_low", "ci_high", "normalized"):
            assert getattr(e, field) == pytest.approx(getattr(reference, field), rel=1e-9), (name, field)
    unavailable = sorted(n for n, e in report.estimates.items() if not e.available)
    assert unavailable == (["kernel_pdis", "kernel_sequential_dr"] if overflow else [])
    for estimate in report.estimates.values():
        _strict_json(estimate.model_dump_json())  # no NaN / Infinity in any estimate

    decision = gate_model(report, None, GateConfig(threshold=0.0, min_effective_sample_size=1.0))
    assert not any("NaN" in r for r in decision.reasons), decision.reasons
    assert len(decision.notes) == len(unavailable)
    for name, note in zip(unavailable, decision.notes, strict=True):
        assert note.startswith(f"{name}: cumulative importance weights reach exp(")
        assert note.endswith(f"(reported, does not block: the gate decides on {report.headline})")
