"""Logged-data health: hand-counted shares on small frames, the support the evaluation measures,
and the gate rejecting (and not deploying) a candidate whose data break the thresholds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from action_kind_data import continuous_timelines, parametric_timelines
from evaluation_data import LOGGING_WEIGHTS, ORACLE_WEIGHTS, register_linear_policy

from contracts import ActionKind
from evaluation import (
    CpeReport,
    DataHealth,
    Estimate,
    EvaluationConfig,
    GateConfig,
    HealthCheck,
    HealthCheckKind,
    HealthThresholds,
    RewardModelFit,
    TargetOverlap,
    check_data_health,
    evaluate_action_samples,
    evaluate_and_gate,
    evaluate_candidate_probabilities,
    evaluate_probabilities,
    gate_model,
    load_report,
    save_report,
)
from features import NormalizationSpec, fit_normalization, frame_from_feature_maps
from trainer import ModelRegistry

EPSILON = 0.1


def _decisions(
    propensities: list[float],
    *,
    possible: list[list[str]] | None = None,
    states: list | None = None,
    observed: list | None = None,
    versions: list[str] | None = None,
) -> pd.DataFrame:
    """One-step discrete decisions of action 'a'; every other column as the tests need it."""
    n = len(propensities)
    return pd.DataFrame(
        {
            "mdp_id": [f"m{i}" for i in range(n)],
            "sequence_number_ordinal": np.ones(n, dtype=np.int64),
            "state_features": states if states is not None else [{"x": 1.0} for _ in range(n)],
            "action": ["a"] * n,
            "action_probability": propensities,
            "possible_actions": possible if possible is not None else [["a", "b"] for _ in range(n)],
            "reward": np.ones(n),
            "reward_observed": observed if observed is not None else [True] * n,
            "model_version": versions if versions is not None else ["v1"] * n,
        }
    )


def _by_name(health: DataHealth) -> dict[str, HealthCheck]:
    return {c.name: c for c in health.checks}


def _health(frame: pd.DataFrame, **thresholds: float) -> DataHealth:
    return check_data_health(frame, HealthThresholds(**thresholds), ActionKind.DISCRETE)


# --- missing features ----------------------------------------------------------------------------


def test_missing_share_per_feature_counts_absent_none_and_nan() -> None:
    # x is absent in row 1, None in row 2, NaN in row 3: 3 of 10 = 30 %; y is always there; z only
    # in row 0: 9 of 10 = 90 %. Row 4 is an Arrow map (key/value pairs), as parquet reads it back.
    states = [
        {"x": 1.0, "y": 2.0, "z": 3.0},
        {"y": 2.0},
        {"x": None, "y": 2.0},
        {"x": math.nan, "y": 2.0},
        [("x", 1.0), ("y", 2.0)],
        *({"x": 1.0, "y": 2.0} for _ in range(5)),
    ]
    versions = ["v1"] * 5 + ["v2"] * 5
    health = _health(_decisions([0.5] * 10, states=states, versions=versions))
    checks = _by_name(health)
    missing = {n: c.value for n, c in checks.items() if n.startswith("missing_feature:")}
    assert missing == {"missing_feature:x": 0.3, "missing_feature:y": 0.0, "missing_feature:z": 0.9}
    assert [c.name for c in health.failures] == ["missing_feature:z"]
    # x's three gaps are all in v1's five rows: 60 % there.
    assert checks["missing_feature:x"].detail == (
        "feature 'x' missing on 30.0% of decisions (max 50%); 60.0% under logging model 'v1'"
    )
    assert checks["missing_feature:z"].subject == "z" and checks["missing_feature:z"].threshold == 0.5
    assert not health.passed


def test_the_spec_names_the_features_checked() -> None:
    states = [{"x": 1.0, "y": 2.0}, {"y": 2.0}, {"x": 3.0}, {"x": 4.0}]
    health = check_data_health(
        _decisions([0.5] * 4, states=states),
        HealthThresholds(),
        ActionKind.DISCRETE,
        feature_names=["x", "w"],
    )
    missing = {c.subject: c.value for c in health.checks if c.check is HealthCheckKind.MISSING_FEATURE}
    assert missing == {"x": 0.25, "w": 1.0}  # y is not the model's feature; w is and never arrives
    assert [c.detail for c in health.failures] == ["feature 'w' missing on 100.0% of decisions (max 50%)"]


# --- propensities --------------------------------------------------------------------------------


def test_propensities_outside_the_range_are_counted() -> None:
    # 0, 1.5, NaN and 5e-5 (below min_propensity 1e-4) are out of range; 1e-4 itself is in: 4 of 10.
    frame = _decisions([0.5] * 5 + [0.0, 1.5, math.nan, 5e-5, 1e-4])
    check = _by_name(_health(frame))["propensity_range"]
    assert check.value == 0.4 and check.threshold == 0.0 and not check.passed and check.blocking
    assert check.detail == (
        "logged propensity missing, ≤ 0, below 0.0001 or above 1 on 40.0% of decisions (max 0%); "
        "4 of 10 decisions, e.g. m5#1 = 0.0, m6#1 = 1.5, m7#1 = nan"
    )
    assert _by_name(_health(frame, max_bad_propensity_share=0.4))["propensity_range"].passed
    assert _by_name(_health(frame, min_propensity=1e-5, max_bad_propensity_share=0.3))[
        "propensity_range"
    ].passed


def test_continuous_propensities_are_finite_log_densities() -> None:
    frame = _decisions([math.nan] * 4).assign(action_log_density=[-1.0, math.inf, math.nan, 3.0])
    health = check_data_health(frame, HealthThresholds(max_bad_propensity_share=0.25), ActionKind.CONTINUOUS)
    check = _by_name(health)["propensity_range"]
    assert check.value == 0.5 and not check.passed  # inf and NaN; a positive log density is fine
    assert "propensity_count:v1" not in _by_name(health)  # densities: no sum to check


def test_mean_inverse_propensity_is_compared_with_the_actions_on_offer() -> None:
    # 1/μ = 2, 4, 4, 2 with 3 actions on offer: mean 3; differences −1, 1, 1, −1: SE √(4/3)/2.
    consistent = _by_name(_health(_decisions([0.5, 0.25, 0.25, 0.5], possible=[["a", "b", "c"]] * 4)))
    check = consistent["propensity_count:v1"]
    assert (check.value, check.threshold) == (3.0, 3.0)
    assert check.standard_error == pytest.approx(math.sqrt(4 / 3) / 2)
    assert check.passed and not check.blocking

    # v2 logs 0.25 where two actions are on offer: 1/μ = 4 > 2, propensities summing to 0.5.
    frame = _decisions([0.5, 0.5, 0.25, 0.25], possible=[["a", "b"]] * 4, versions=["v1", "v1", "v2", "v2"])
    health = _health(frame)
    v1, v2 = _by_name(health)["propensity_count:v1"], _by_name(health)["propensity_count:v2"]
    assert (v1.value, v1.threshold, v1.passed) == (2.0, 2.0, True)
    assert (v2.value, v2.threshold, v2.passed) == (4.0, 2.0, False)
    assert "inflated, by about 2.00×" in v2.detail
    assert health.warnings == [v2] and health.passed  # reported, not blocking


def test_a_greedy_logger_is_consistent_but_named() -> None:
    check = _by_name(_health(_decisions([1.0] * 4, possible=[["a", "b", "c"]] * 4)))["propensity_count:v1"]
    assert (check.value, check.threshold, check.passed) == (1.0, 3.0, True)
    assert "fewer than on offer" in check.detail
    assert "4 decisions log propensity 1 with several actions possible" in check.detail


# --- reward join ---------------------------------------------------------------------------------


def test_reward_join_rate() -> None:
    observed = [True, True, True, True, False, False, None, False, False, False]
    frame = _decisions([0.5] * 10, observed=observed, versions=["v1"] * 5 + ["v2"] * 5)
    assert _by_name(_health(frame))["reward_join_rate"].passed  # the default minimum is 0
    check = _by_name(_health(frame, min_reward_join_rate=0.5))["reward_join_rate"]
    assert (check.value, check.passed) == (0.4, False)
    assert check.detail == "reward joined to 40.0% of decisions (min 50%); 0.0% under logging model 'v2'"
    assert (
        "reward_join_rate: no reward_observed column"
        in _health(frame.drop(columns=["reward_observed"])).not_measured
    )


# --- support -------------------------------------------------------------------------------------


def test_support_counts_unoffered_actions_and_greedy_choices() -> None:
    # Row 0 offers all the candidate's mass; row 1 offers 0.7 of it; row 2 was logged with
    # propensity 1, so only the logged action (candidate probability 0.6 = its weight) has support;
    # row 3 lists no possible actions. Support = (1 + 0.7 + 0.6 + 1) / 4 = 0.825.
    frame = _decisions([0.5, 0.5, 1.0, 0.5])
    overlap = TargetOverlap(
        weights=np.array([1.2, 0.8, 0.6, 1.0]),
        offered_mass=np.array([1.0, 0.7, 1.0, 0.4]),
        offered_known=np.array([True, True, True, False]),
    )
    health = check_data_health(frame, HealthThresholds(), ActionKind.DISCRETE, overlap=overlap)
    support = _by_name(health)["target_support"]
    assert support.value == pytest.approx(0.825) and not support.passed and support.blocking
    assert support.detail == (
        "the candidate puts 82.5% of its probability on actions the logger could choose (min 99%); "
        "7.5% on actions the decision did not offer, 10.0% on actions other than one logged with propensity 1 "
        "(a greedy choice); 1 of 4 decisions list no possible actions (counted as offering every action)"
    )
    # Weights 1.2, 0.8, 0.6, 1.0: mean 0.9, sample variance 0.2/3.
    weights = _by_name(health)["weight_mean"]
    assert weights.value == pytest.approx(0.9)
    assert weights.standard_error == pytest.approx(math.sqrt(0.2 / 3) / 2)
    assert weights.passed and not weights.blocking  # 0.1 below 1 is within 3 standard errors


def _offer_frame(n: int, seed: int) -> pd.DataFrame:
    """Even rows offer a, b (logged uniformly, μ = 1/2); odd rows a, b, c (μ = 1/3)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    possible = [["a", "b"] if i % 2 == 0 else ["a", "b", "c"] for i in range(n)]
    actions = [str(rng.choice(p)) for p in possible]
    return pd.DataFrame(
        {
            "mdp_id": [f"m{i:04d}" for i in range(n)],
            "sequence_number_ordinal": np.ones(n, dtype=np.int64),
            "state_features": [{"x": float(v)} for v in x],
            "action": actions,
            "action_probability": [1.0 / len(p) for p in possible],
            "possible_actions": possible,
            "reward": [v if a == "a" else -v for v, a in zip(x, actions, strict=True)],
            "reward_observed": True,
            "model_version": "logging-v0",
        }
    )


def test_a_candidate_putting_mass_on_unoffered_actions_lacks_support_and_is_rejected() -> None:
    frame = _offer_frame(400, seed=4)
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    # Candidate: a 0.5, b 0.2, c 0.3 everywhere; c is not on offer in the even half, so its support
    # is 0.5 · 0.7 + 0.5 · 1 = 0.85 (and E_μ[π/μ] is the same 0.85: the mass where μ > 0).
    target = np.tile([0.5, 0.2, 0.3], (len(frame), 1))
    config = EvaluationConfig(bootstrap_samples=20, min_rows=1)
    report = evaluate_probabilities(frame, target, ["a", "b", "c"], "m-offer", config, spec)
    assert report.data_health is not None
    checks = _by_name(report.data_health)
    assert checks["target_support"].value == pytest.approx(0.85)
    weights = checks["weight_mean"]
    assert abs(weights.value - 0.85) <= 3 * weights.standard_error
    decision = gate_model(report, None, GateConfig(threshold=0.0, min_effective_sample_size=0.0))
    assert not decision.approved
    assert decision.reasons[0].startswith(
        "data health: the candidate puts 85.0% of its probability on actions the logger could choose "
        "(min 99%); 15.0% on actions the decision did not offer"
    )
    assert decision.checked["data_health/target_support"] == pytest.approx(0.85)
    lenient = config.model_copy(update={"health": HealthThresholds(min_target_support=0.85)})
    allowed = evaluate_probabilities(frame, target, ["a", "b", "c"], "m-offer", lenient, spec)
    assert allowed.data_health is not None and allowed.data_health.passed


# --- the report and the gate ---------------------------------------------------------------------


def _report(health: DataHealth | None) -> CpeReport:
    """A report the gate approves on its estimates alone (DR 1.05–1.15× the logged policy)."""
    dr = Estimate(
        estimator="dr",
        value=2.2,
        normalized=1.1,
        ci_low=2.1,
        ci_high=2.3,
        normalized_ci_low=1.05,
        normalized_ci_high=1.15,
        confidence=0.95,
        bootstrap_samples=200,
        n=10_000,
        logged_value=2.0,
        effective_sample_size=5_000.0,
        min_propensity=0.2,
        max_propensity=0.6,
        max_weight=4.0,
    )
    return CpeReport(
        model_version="m0002-aaaaaaaa",
        logged_policy_versions=["v1"],
        n_decisions=10_000,
        n_episodes=10_000,
        logged_value=2.0,
        logged_episode_value=2.0,
        gamma=0.9,
        estimates={"dr": dr},
        reward_model=RewardModelFit(
            model_type="ridge", folds=2, n_rows=10_000, rmse=0.3, r2=0.6, rows_per_action={}
        ),
        data_health=health,
        reliable=True,
        verdict="test",
    )


def test_a_blocking_breach_rejects_with_the_check_value_and_threshold() -> None:
    states = [{"x": 1.0} if i < 63 else {"x": 1.0, "age": 30.0} for i in range(100)]
    health = _health(_decisions([0.5] * 100, states=states))
    decision = gate_model(_report(health), None, GateConfig())
    assert not decision.approved
    assert decision.reasons == ["data health: feature 'age' missing on 63.0% of decisions (max 50%)"]
    assert decision.checked["data_health/missing_feature:age"] == 0.63
    assert decision.summary.endswith("; rejected: " + decision.reasons[0])
    assert gate_model(_report(None), None, GateConfig()).approved  # reports before health: not judged


def test_a_failed_diagnostic_does_not_block() -> None:
    health = _health(_decisions([0.25] * 4, possible=[["a", "b", "c"]] * 4))
    assert [c.name for c in health.warnings] == ["propensity_count:v1"]
    decision = gate_model(_report(health), None, GateConfig())
    assert decision.approved and decision.reasons == []


def test_reports_round_trip_with_health_and_load_without_it(tmp_path: Path) -> None:
    health = _health(_decisions([0.5, 0.0]))
    report = _report(health)
    assert load_report(save_report(report, tmp_path / "new")) == report
    old = json.loads(report.model_dump_json())
    del old["data_health"]
    old["schema_version"] = 2
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "cpe_report.json").write_text(json.dumps(old))
    loaded = load_report(tmp_path / "old")
    assert loaded.data_health is None and loaded.schema_version == 2


def _with_x2_missing_on_every_fourth_row(timelines: pd.DataFrame) -> pd.DataFrame:
    frame = timelines.copy()
    frame["state_features"] = [
        {"x1": s["x1"]} if i % 4 == 0 else {"x1": s["x1"], "x2": 5.0}
        for i, s in enumerate(frame["state_features"])
    ]
    return frame


def test_evaluate_and_gate_keeps_the_deployed_model_when_the_data_break_a_threshold(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    previous = register_linear_policy(registry, LOGGING_WEIGHTS, EPSILON).version
    registry.deploy(previous, reason="serving before the refresh")
    candidate = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    frame = _with_x2_missing_on_every_fourth_row(bandit_timelines.head(2_000))  # x2 missing: 500 of 2,000
    strict = EvaluationConfig(bootstrap_samples=50, health=HealthThresholds(max_missing_feature_share=0.2))

    report, decision = evaluate_and_gate(frame, registry, candidate, strict, bandit_spec, tmp_path / "strict")

    assert not decision.approved and not decision.deployed
    assert decision.reasons == ["data health: feature 'x2' missing on 25.0% of decisions (max 20%)"]
    assert registry.deployed() == previous
    assert report is not None and report.data_health is not None
    assert [c.name for c in report.data_health.failures] == ["missing_feature:x2"]
    written = json.loads((tmp_path / "strict" / candidate / "gate.json").read_text())
    assert written["reasons"] == decision.reasons and written["deployed"] is False
    page = (tmp_path / "strict" / candidate / "report.html").read_text()
    assert "<h2>Logged-data health</h2>" in page
    assert "<tr><td>missing_feature:x2</td><td>0.25</td><td>0.2</td><td>FAIL (blocks the deploy)</td>" in page

    # The same data under the default thresholds (max 50 % missing): the estimate alone decides.
    report, decision = evaluate_and_gate(
        frame, registry, candidate, EvaluationConfig(bootstrap_samples=50), bandit_spec, tmp_path / "default"
    )
    assert decision.approved and registry.deployed() == candidate, decision.reasons


def test_data_that_cannot_be_evaluated_name_the_failed_health_check(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    previous = register_linear_policy(registry, LOGGING_WEIGHTS, EPSILON).version
    registry.deploy(previous, reason="serving before the refresh")
    candidate = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    frame = bandit_timelines.head(200).copy()
    frame.loc[7, "action_probability"] = 0.0
    report, decision = evaluate_and_gate(
        frame, registry, candidate, EvaluationConfig(), bandit_spec, tmp_path
    )
    assert report is None and not decision.approved and registry.deployed() == previous
    assert decision.reasons[0].startswith(f"model {candidate} could not be evaluated: 1 of 200 rows")
    assert decision.reasons[1] == (
        "data health: logged propensity missing, ≤ 0, below 0.0001 or above 1 on 0.5% of decisions (max 0%); "
        f"1 of 200 decisions, e.g. {frame.loc[7, 'mdp_id']}#1 = 0.0"
    )


def test_every_kind_reports_its_checks() -> None:
    config = EvaluationConfig(bootstrap_samples=20, min_rows=1)
    # Parametric, logged uniformly over each row's candidates; a uniform candidate replays the
    # logger, so every weight is exactly 1 and all its mass is on offered candidates.
    frame = parametric_timelines(60, seed=5)
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    counts = np.array([len(p) for p in frame["possible_actions"]])
    uniform = np.where(np.arange(5)[None, :] < counts[:, None], 1.0 / counts[:, None], 0.0)
    report = evaluate_candidate_probabilities(frame, uniform, "m-par", config, spec)
    assert report.data_health is not None
    checks = _by_name(report.data_health)
    assert set(checks) == {
        "propensity_range", "propensity_count:uniform-v0", "target_support", "weight_mean",
        "missing_feature:u0", "missing_feature:u1",
    }  # fmt: skip
    assert checks["target_support"].value == pytest.approx(1.0) and checks["target_support"].passed
    assert checks["weight_mean"].value == pytest.approx(1.0) and checks["weight_mean"].passed
    assert report.data_health.not_measured == ["reward_join_rate: no reward_observed column"]

    # Continuous: no offered set, so support is only the (non-blocking) kernel weight mean.
    frame = continuous_timelines(300, seed=5)
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    x = np.array([s["x"] for s in frame["state_features"]])
    report = evaluate_action_samples(frame, (1.5 * x)[None, :, None], "m-cont", config, spec, ["a"])
    assert report.data_health is not None
    checks = _by_name(report.data_health)
    assert set(checks) == {"propensity_range", "weight_mean", "missing_feature:x"}
    assert not checks["weight_mean"].blocking and "kernel-smoothed" in checks["weight_mean"].detail
