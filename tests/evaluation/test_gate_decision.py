"""gate_model: approve only with a confident, finite, well-supported, stable headline estimate."""

from __future__ import annotations

import math

import pytest

from evaluation import (
    CpeReport,
    Estimate,
    GateAlert,
    GateConfig,
    RewardModelFit,
    gate_model,
    record_alerts,
    render_html,
)
from evaluation.bounds import BoundMethod, HighConfidenceBound
from evaluation.estimators import mark_unavailable


def _report(
    normalized_low: float = 1.05,
    value: float = 2.2,
    ess: float = 5_000.0,
    reliable: bool = True,
    version: str = "m0002-aaaaaaaa",
    normalized_high: float | None = None,
) -> CpeReport:
    dr = Estimate(
        estimator="dr",
        value=value,
        normalized=value / 2.0,
        ci_low=value - 0.1,
        ci_high=value + 0.1,
        normalized_ci_low=normalized_low,
        normalized_ci_high=value / 2.0 + 0.1 if normalized_high is None else normalized_high,
        confidence=0.95,
        bootstrap_samples=200,
        n=10_000,
        logged_value=2.0,
        effective_sample_size=ess,
        min_propensity=0.2,
        max_propensity=0.6,
        max_weight=4.0,
    )
    return CpeReport(
        model_version=version,
        logged_policy_versions=["m0001-bbbbbbbb"],
        n_decisions=10_000,
        n_episodes=10_000,
        logged_value=2.0,
        logged_episode_value=2.0,
        gamma=0.9,
        estimates={"dr": dr},
        reward_model=RewardModelFit(
            model_type="ridge", folds=2, n_rows=10_000, rmse=0.3, r2=0.6, rows_per_action={}
        ),
        reliable=reliable,
        warnings=[] if reliable else ["only 10 decisions, fewer than min_rows=1000"],
        verdict="test",
    )


def test_approves_a_confident_improvement() -> None:
    decision = gate_model(_report(), None, GateConfig())
    assert decision.approved, decision.reasons
    assert decision.reasons == []
    assert decision.checked["headline_normalized_ci_low"] == 1.05


def test_rejects_lower_bound_below_threshold() -> None:
    decision = gate_model(_report(normalized_low=0.98), None, GateConfig(threshold=1.0))
    assert not decision.approved
    assert "normalized dr lower bound 0.9800 is below the threshold 1.0000" in decision.reasons[0]
    assert gate_model(_report(normalized_low=0.98), None, GateConfig(threshold=0.95)).approved


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_rejects_non_finite_values(bad: float) -> None:
    decision = gate_model(_report(normalized_low=bad), None, GateConfig())
    assert not decision.approved
    assert "non-finite" in decision.reasons[0]


def test_rejects_low_effective_sample_size() -> None:
    decision = gate_model(_report(ess=40.0), None, GateConfig(min_effective_sample_size=100))
    assert not decision.approved
    assert decision.reasons == [
        "effective sample size 40.0 is below the minimum 100.0: the new policy is too far from the "
        "logged one for the data to judge it"
    ]


def test_rejects_unreliable_report() -> None:
    decision = gate_model(_report(reliable=False), None, GateConfig())
    assert not decision.approved
    assert "unreliable: only 10 decisions" in decision.reasons[0]


def test_swing_against_previous_report() -> None:
    previous = _report(value=2.0, version="m0001-bbbbbbbb")
    config = GateConfig(max_swing=0.2)
    jumped = gate_model(_report(value=3.0), previous, config)  # +50 %
    assert not jumped.approved
    assert "relative change of 0.500 > max_swing 0.200" in jumped.reasons[0]
    assert jumped.checked["swing"] == pytest.approx(0.5)
    assert gate_model(_report(value=2.2), previous, config).approved  # +10 %
    assert gate_model(_report(value=3.0), previous, GateConfig()).approved  # swing not configured
    assert gate_model(_report(value=3.0), None, config).approved  # nothing to compare to


def test_decision_round_trips_as_json() -> None:
    decision = gate_model(_report(normalized_low=math.nan), None, GateConfig())
    again = type(decision).model_validate_json(decision.model_dump_json())
    assert again.approved is False and math.isnan(again.checked["headline_normalized_ci_low"])


def test_swing_raises_an_alert_recorded_in_a_jsonl_file(tmp_path, caplog) -> None:
    previous = _report(value=2.0, version="m0001-bbbbbbbb")
    decision = gate_model(_report(value=3.0), previous, GateConfig(max_swing=0.2))
    assert [a.kind for a in decision.alerts] == ["swing"]
    assert decision.alerts[0].previous_model_version == "m0001-bbbbbbbb"
    with caplog.at_level("WARNING", logger="evaluation.gate"):
        path = record_alerts(decision, tmp_path)
    assert path == tmp_path / "alerts.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and GateAlert.model_validate_json(lines[0]).swing == pytest.approx(0.5)
    assert "CPE gate alert for model m0002-aaaaaaaa" in caplog.text
    assert record_alerts(gate_model(_report(), None, GateConfig()), tmp_path) is None


def test_non_finite_secondary_estimate_rejects() -> None:
    report = _report()
    broken = report.headline_estimate.model_copy(update={"estimator": "pdis", "value": math.nan})
    report = report.model_copy(update={"estimates": {**report.estimates, "pdis": broken}})
    decision = gate_model(report, None, GateConfig())
    assert not decision.approved
    assert "estimates ['pdis'] are NaN or infinite" in decision.reasons[0]


def test_summary_reads_as_a_sentence() -> None:
    decision = gate_model(_report(normalized_low=1.05, value=2.2), None, GateConfig())
    assert decision.summary == (
        "the new policy (m0002-aaaaaaaa) is estimated at 1.10× the logged policy (95 % CI 1.05–1.20); approved"
    )
    rejected = gate_model(_report(normalized_low=0.98), None, GateConfig())
    assert rejected.summary.endswith("; rejected: " + rejected.reasons[0])


def _unavailable_pdis(report: CpeReport) -> Estimate:
    reason = "pdis: cumulative importance weights reach exp(812.0) over episodes of up to 200 steps"
    return mark_unavailable(report.headline_estimate.model_copy(update={"estimator": "pdis"}), reason)


def test_estimate_not_computable_by_design_is_noted_and_does_not_block() -> None:
    report = _report()
    pdis = _unavailable_pdis(report)
    assert not pdis.available and not pdis.reliable and pdis.value is None and pdis.normalized_ci_low is None
    report = report.model_copy(update={"estimates": {**report.estimates, "pdis": pdis}})
    decision = gate_model(report, None, GateConfig())
    assert decision.approved and decision.reasons == []
    assert decision.notes == [
        "pdis: cumulative importance weights reach exp(812.0) over episodes of up to 200 steps "
        "(reported, does not block: the gate decides on dr)"
    ]
    assert decision.summary.endswith("; approved; not computable for these data, not blocking: ['pdis']")
    # valid JSON without NaN / Infinity constants, and it reads back
    text = report.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    assert CpeReport.model_validate_json(text) == report
    assert type(decision).model_validate_json(decision.model_dump_json()) == decision


def test_headline_not_computable_blocks() -> None:
    report = _report()
    dr = mark_unavailable(report.headline_estimate, "dr: no decision has a positive weight")
    decision = gate_model(report.model_copy(update={"estimates": {"dr": dr}}), None, GateConfig())
    assert not decision.approved
    assert (
        decision.reasons[0]
        == "the headline estimate dr cannot be computed: dr: no decision has a positive weight"
    )
    assert "could not be estimated (dr unavailable)" in decision.summary


def test_html_report_tells_not_computable_from_broken() -> None:
    report = _report()
    broken = report.headline_estimate.model_copy(
        update={
            "estimator": "wdr",
            "value": math.nan,
            "reliable": False,
            "warnings": ["wdr: the value is NaN"],
        }
    )
    estimates = {**report.estimates, "pdis": _unavailable_pdis(report), "wdr": broken}
    report = report.model_copy(update={"estimates": estimates})
    decision = gate_model(report, None, GateConfig())
    assert not decision.approved and len(decision.reasons) == 1
    assert decision.reasons[0] == (
        "estimates ['wdr'] are NaN or infinite although computable for these data: a corrupt input, or too "
        "few episodes that support the target policy — inspect the report's weight diagnostics "
        "(wdr: the value is NaN)"
    )
    page = render_html(report, decision.summary, decision.reasons, decision.notes)
    pdis_row = page[page.index("<tr><td>pdis</td>") :].split("</tr>")[0]
    assert '<td colspan="4">not computable for these data</td>' in pdis_row
    assert (
        "NOT COMPUTABLE (by design, not a data error; does not block the gate): pdis: cumulative" in pdis_row
    )
    wdr_row = page[page.index("<tr><td>wdr</td>") :].split("</tr>")[0]
    assert "<td>nan</td>" in wdr_row and "NO: wdr: the value is NaN" in wdr_row
    assert "<p>Gate reasons (blocking):</p><ul><li>estimates [&#x27;wdr&#x27;] are NaN" in page
    assert "<p>Not computable for these data (reported, not blocking):</p><ul><li>pdis: cumulative" in page


def _with_bound(report: CpeReport, method: BoundMethod, normalized_lower: float) -> CpeReport:
    bound = HighConfidenceBound(
        method=method,
        estimator="ips",
        confidence=0.95,
        lower=2.0 * normalized_lower,
        normalized_lower=normalized_lower,
        mean=2.2,
        n=10_000,
        range_low=None,
        range_high=None,
        range_source=None,
        guaranteed=False,
        description="test",
    )
    return report.model_copy(update={"bounds": [bound]})


def test_a_required_bound_below_the_threshold_blocks_an_otherwise_approved_model() -> None:
    report = _with_bound(_report(), BoundMethod.T_TEST, 0.97)
    assert gate_model(report, None, GateConfig()).approved  # not required: the bootstrap alone decides
    decision = gate_model(report, None, GateConfig(require_bound=BoundMethod.T_TEST))
    assert not decision.approved
    assert decision.reasons == [
        "the t_test lower bound on ips is 0.9700× the logged policy, below the threshold 1.0000"
    ]
    assert decision.checked["t_test_normalized_lower"] == 0.97
    passing = _with_bound(_report(), BoundMethod.T_TEST, 1.01)
    assert gate_model(passing, None, GateConfig(require_bound=BoundMethod.T_TEST)).approved


def test_a_required_bound_missing_from_the_report_blocks() -> None:
    report = _with_bound(_report(), BoundMethod.T_TEST, 1.2)
    decision = gate_model(report, None, GateConfig(require_bound=BoundMethod.EMPIRICAL_BERNSTEIN))
    assert not decision.approved
    assert decision.reasons[0].startswith("the required empirical_bernstein bound is not in the report")


def test_html_report_draws_an_interval_that_does_not_contain_its_point() -> None:
    """A percentile interval of refitted models can lie wholly on one side of the point estimate
    (seen on a 92-row refresh); the page still renders, and its table shows both as they are."""
    report = _report()
    shifted = report.headline_estimate.model_copy(
        update={"normalized": 1.30, "normalized_ci_low": 0.92, "normalized_ci_high": 1.21}
    )
    report = report.model_copy(update={"estimates": {**report.estimates, "dr": shifted}})
    decision = gate_model(report, None, GateConfig())
    page = render_html(report, decision.summary, decision.reasons, decision.notes)
    assert "<img" in page and "1.21" in page and "1.3" in page


def test_undecided_only_when_the_data_cannot_judge_and_nothing_is_wrong() -> None:
    """`undecided` (what a canary may take over) means: rejected for lack of evidence alone — the
    data cannot judge, or the interval holds the threshold."""
    config = GateConfig(min_effective_sample_size=100)
    # Cannot judge: low ESS, or an unreliable report — even with the lower bound under the threshold.
    assert gate_model(_report(ess=40.0), None, config).undecided
    assert gate_model(_report(reliable=False, normalized_low=0.9), None, config).undecided
    # Not shown better nor worse: a reliable interval that holds the threshold (0.98–1.2 around 1.0).
    straddles = gate_model(_report(normalized_low=0.98), None, config)
    assert not straddles.approved and straddles.undecided
    # Judged worse: the whole interval lies below the threshold.
    worse = gate_model(_report(normalized_low=0.90, normalized_high=0.99), None, config)
    assert not worse.approved and not worse.undecided
    assert not gate_model(_report(), None, config).undecided  # approved
    # Something is wrong besides: non-finite values, or a swing, are never left to a canary.
    assert not gate_model(_report(normalized_low=math.nan, ess=40.0), None, config).undecided
    swung = gate_model(
        _report(value=3.0, ess=40.0), _report(value=2.0, version="m0001-bbbbbbbb"), GateConfig(max_swing=0.2)
    )
    assert not swung.approved and not swung.undecided


def test_a_bound_at_the_threshold_up_to_float_rounding_passes() -> None:
    """1.0 means "at least as good": a bound equal to it but for the last bits is not below it."""
    assert gate_model(_report(normalized_low=1.0 - 2e-16), None, GateConfig(threshold=1.0)).approved
    assert not gate_model(_report(normalized_low=1.0 - 1e-6), None, GateConfig(threshold=1.0)).approved
