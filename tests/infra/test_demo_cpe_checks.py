"""The demo's parts that need no stack: the CPE check (an approved candidate's estimate per decision
against what it realized on the days it then served, hand-computed errors), and the copy of the
example manifest it brings up (one refresh per simulated day)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from infra.demo import DaySummary, DemoError, DemoPlan, cpe_checks, format_summary, write_demo_manifest
from infra.manifest import load_manifest


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


def test_a_promoted_canary_is_checked_against_what_it_realized_once_deployed() -> None:
    """Night 0's candidate is undecided and tried on half of day 1; night 1 promotes it on its
    realized mean (0.4600 per decision); on day 2 it serves beside the next canary, and on day 3 alone."""
    night0 = _day(0, "rule", 0.4200, "m1", 0.4400, "canary")
    day1 = replace(
        _day(1, "rule", 0.4400, "m2", 0.4500, "canary"),
        canary_version="m1",
        canary_share=0.5,
        realized_by_version={"rule": 0.4200, "m1": 0.4620},
        canary_outcome="promote",
        canary_estimate=0.4600,
        canary_baseline=0.4190,
    )
    day2 = replace(
        _day(2, "m1", 0.4550, "m3", 0.4500, "rejected"),
        canary_version="m2",
        canary_share=0.5,
        realized_by_version={"m1": 0.4692, "m2": 0.4408},
        canary_outcome="stop",
        canary_estimate=0.4400,
        canary_baseline=0.4690,
    )
    day3 = _day(3, "m1", 0.4508, "m4", 0.4500, "rejected")
    lines = cpe_checks([night0, day1, day2, day3])
    # (0.46 − 0.4692)/0.4692 = −1.96 %; (0.46 − 0.4508)/0.4508 = +2.04 %: its own decisions only
    assert lines == [
        "canary check: night 1 promoted m1, which realized 0.4600 per decision on its 50% of day 1's user-days "
        "(the rest: 0.4190); deployed, it realized 0.4692 on day 2 (-2.0%)",
        "canary check: night 1 promoted m1, which realized 0.4600 per decision on its 50% of day 1's user-days "
        "(the rest: 0.4190); deployed, it realized 0.4508 on day 3 (+2.0%)",
    ]
    table = format_summary([night0, day1, day2, day3]).splitlines()
    assert "rule + m1 (50%)" in table[2] and table[2].endswith("promote (0.4600 vs 0.4190)")
    assert "m1 + m2 (50%)" in table[3] and table[3].endswith("stop (0.4400 vs 0.4690)")


def test_the_table_shows_a_skipped_night_without_a_candidate() -> None:
    skipped = _day(0, "hand-written-rule", 0.4200, "", float("nan"), "skipped")
    table = format_summary([skipped]).splitlines()
    assert table[1].split() == [
        "0",
        "hand-written-rule",
        "0.4200",
        "0.4200",
        "0.4800",
        "50%",
        "-",
        "nan",
        "[nan,",
        "nan]",
        "skipped",
        "-",
    ]
    assert cpe_checks([skipped]) == []


def test_the_demo_manifest_refreshes_once_per_simulated_day(tmp_path: Path) -> None:
    plan = DemoPlan(
        users=150,
        manifest_overrides={"serving": {"port": 28999}, "gate": {"problem": "one_step", "min_rows": 100}},
    )
    manifest = load_manifest(write_demo_manifest(plan, tmp_path / "manifest.yaml"))
    assert manifest.app == "notifications"
    # 150 users × 4 slots: the row trigger fires once a day's decisions are all timeline rows.
    assert manifest.refresh.every_new_rows == 600
    assert manifest.refresh.daily_at_utc is None  # a demo day lasts seconds: no 03:00 turn mid-run
    assert manifest.refresh.min_training_rows == 600  # the example's 1,000, capped at one day
    assert manifest.serving.port == 28999 and manifest.serving.day0.type == "none"
    # Overrides merge key by key: the rest of the example's gate stays.
    assert (manifest.gate.problem, manifest.gate.min_rows, manifest.gate.gamma) == ("one_step", 100, 1.0)
    assert dict(manifest.reward.metrics) == {"engaged": 1.0, "sent": -0.05}
    default = load_manifest(write_demo_manifest(DemoPlan(), tmp_path / "default.yaml"))
    assert default.refresh.every_new_rows == 16_000 and default.refresh.min_training_rows == 1000
    with pytest.raises(DemoError, match="days, users and batch_size >= 1"):
        DemoPlan(days=0)
