"""The demo's CPE check: an approved candidate's estimate per decision against what it realized on
the days it then served (hand-computed errors)."""

from __future__ import annotations

from infra.demo import DaySummary, cpe_checks


def _day(day: int, served: str, realized: float, candidate: str, estimate: float, gate: str) -> DaySummary:
    return DaySummary(
        day=day,
        model_version=served,
        realized_reward=realized,
        logging_reward=0.42,
        oracle_reward=0.48,
        gap_closed=0.5,
        decisions=100,
        timeline_rows=100,
        candidate_version=candidate,
        cpe_estimator="magic",
        cpe_estimate=estimate,
        cpe_ci_low=estimate - 0.01,
        cpe_ci_high=estimate + 0.01,
        cpe_normalized=1.1,
        gate=gate,
        gate_reasons=[],
    )


def test_each_approved_candidate_is_checked_against_every_day_it_served() -> None:
    rows = [
        _day(0, "rule", 0.4200, "m1", 0.4600, "approved"),
        _day(1, "m1", 0.4500, "m2", 0.4700, "rejected"),
        _day(2, "m1", 0.4400, "m3", 0.4800, "approved"),
        _day(3, "m3", 0.5000, "m4", 0.5000, "rejected"),
    ]
    lines = cpe_checks(rows)
    # (0.46 − 0.45)/0.45 = +2.2 %; (0.46 − 0.44)/0.44 = +4.5 %; (0.48 − 0.50)/0.50 = −4.0 %
    assert [line.split("; it realized ")[1] for line in lines] == [
        "0.4500 on day 1 (+2.2%)",
        "0.4400 on day 2 (+4.5%)",
        "0.5000 on day 3 (-4.0%)",
    ]
    assert lines[0].startswith(
        "CPE check: night 0 estimated 0.4600 per decision for m1 (magic, 95% CI 0.4500–0.4700)"
    )
