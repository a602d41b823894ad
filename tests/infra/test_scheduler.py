"""The refresh scheduler: when a refresh is due (an injected clock), the retry sequence, a failed
refresh that leaves the deployed model serving, the candidate grid's Bonferroni confidence, the
state file, and `streamrl schedule` stopping cleanly on SIGTERM — on real timelines, registry and CPE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from kind_timelines import continuous_rows, discrete_rows, write_timelines

from evaluation import load_report
from infra.config import load_config
from infra.environment import Environment
from infra.manifest import AppManifest, RefreshSpec
from infra.refresh import bonferroni_confidence, refresh_inputs
from infra.scheduler import (
    STATE_FILE,
    DueRefresh,
    RefreshOutcome,
    RefreshRecord,
    RefreshScheduler,
    RefreshTrigger,
    RowTrigger,
    SchedulerError,
    SchedulerPhase,
    SchedulerState,
    TimelineRowCounter,
    after_attempt,
    read_scheduler_state,
    refresh_due,
)
from tests.helpers import write_timeline_partition
from trainer import ModelRegistry

ACTIONS = ["a", "b"]
ROWS = 300
START = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)  # the day after kind_timelines' rows


def at(day: int, hh_mm: str) -> datetime:
    hours, minutes = (int(x) for x in hh_mm.split(":"))
    return datetime(2026, 11, day, hours, minutes, tzinfo=UTC)


def state(**fields) -> SchedulerState:
    return SchedulerState(
        app="shop",
        updated_at=at(1, "00:00"),
        rows=RowTrigger(rows_since_last=0, every_new_rows=None),
        **fields,
    )


class Clock:
    """The scheduler's clock, moved by hand."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def app_env(tmp_path: Path, **manifest: object) -> Environment:
    """A discrete app (linucb, fast) whose gate approves any finite estimate: what is tested is the
    scheduling, not the estimate."""
    fields = {
        "app": "shop",
        "features": [{"name": "x"}, {"name": "z"}],
        "actions": {"kind": "discrete", "names": ACTIONS},
        "trainer": {"type": "linucb"},
        "gate": {
            "threshold": 0.0,
            "min_effective_sample_size": 0,
            "min_rows": 20,
            "bootstrap_samples": 10,
            "confidence": 0.9,
        },
        "refresh": {"daily_at_utc": "03:00", "min_training_rows": 100, "retry_backoff_s": [60, 300]},
        **manifest,
    }
    base = load_config(
        overrides={"apps_dir": str(tmp_path / "apps"), "evaluation": {"holdout_fraction": 0.3}}
    )
    return Environment.for_app(base, AppManifest.model_validate(fields))


def write_discrete(env: Environment, n: int = ROWS) -> None:
    rows = discrete_rows({"actions": ACTIONS}, np.random.default_rng(5), n)
    for row in rows:
        row["reward"] += 2.0  # a logged value well away from 0, so normalized estimates stay moderate
    write_timelines(rows, env.stream_config().output_dir)


# --- when a refresh is due ---------------------------------------------------------------------
def test_daily_refresh_is_due_once_the_daily_time_passed_since_the_last_turn() -> None:
    spec = RefreshSpec(daily_at_utc="03:00")
    last = state(turn_started_at=at(23, "03:10"))
    assert refresh_due(last, at(24, "02:59"), 0, spec) is None
    assert refresh_due(last, at(24, "03:00"), 0, spec) == DueRefresh(RefreshTrigger.DAILY, 1)
    assert refresh_due(last, at(25, "12:00"), 0, spec) == DueRefresh(RefreshTrigger.DAILY, 1)  # missed: once
    # A turn that began before the daily time on the same day: due at it.
    assert refresh_due(state(turn_started_at=at(24, "01:00")), at(24, "03:00"), 0, spec) is not None
    # Never refreshed: due at once (a new app with too few rows skips and says why).
    assert refresh_due(state(), at(24, "10:00"), 0, spec) == DueRefresh(RefreshTrigger.DAILY, 1)


def test_row_refresh_is_due_after_every_new_rows_since_the_last_turn() -> None:
    spec = RefreshSpec(daily_at_utc=None, every_new_rows=500)
    last = state(turn_started_at=at(24, "03:00"), rows_at_last_refresh=1000)
    assert refresh_due(last, at(24, "04:00"), 1499, spec) is None
    assert refresh_due(last, at(24, "04:00"), 1500, spec) == DueRefresh(RefreshTrigger.ROWS, 1)
    assert refresh_due(state(), at(24, "04:00"), 499, spec) is None  # never refreshed: rows count from 0
    assert refresh_due(state(), at(24, "04:00"), 500, spec) == DueRefresh(RefreshTrigger.ROWS, 1)
    both = RefreshSpec(daily_at_utc="03:00", every_new_rows=500)
    assert refresh_due(last, at(24, "05:00"), 1600, both) == DueRefresh(RefreshTrigger.ROWS, 1)
    assert refresh_due(last, at(25, "03:00"), 1000, both) == DueRefresh(RefreshTrigger.DAILY, 1)


def _failed(started: datetime, attempt: int, trigger: RefreshTrigger = RefreshTrigger.DAILY) -> RefreshRecord:
    return RefreshRecord(
        started_at=started,
        finished_at=started + timedelta(seconds=5),
        trigger=trigger,
        attempt=attempt,
        outcome=RefreshOutcome.FAILED,
        error="RuntimeError: boom",
    )


def test_a_failed_turn_is_retried_after_each_backoff_then_waits_for_its_next_turn() -> None:
    spec = RefreshSpec(daily_at_utc="03:00", every_new_rows=100, retry_backoff_s=[60, 300, 900])
    current = state()
    now, rows = at(24, "03:00"), 1000
    retries = []
    for attempt in (1, 2, 3, 4):
        due = refresh_due(current, now, rows, spec)
        assert due == DueRefresh(RefreshTrigger.DAILY, attempt)
        record = _failed(now, attempt)
        current = after_attempt(current, record, spec, rows if attempt == 1 else 0)
        assert current.consecutive_failures == attempt
        assert current.turn_started_at == at(24, "03:00")  # retries stay in the turn
        if current.retry_at is None:
            break
        retries.append((current.retry_at - record.finished_at).total_seconds())
        # Until the retry's time nothing is due, not even the row trigger.
        assert refresh_due(current, current.retry_at - timedelta(seconds=1), rows + 10_000, spec) is None
        now = current.retry_at
    assert retries == [60, 300, 900] and attempt == 4
    # Delays spent: the next turn is the next trigger, the daily time or 100 new rows.
    assert refresh_due(current, now + timedelta(hours=1), rows + 99, spec) is None
    assert refresh_due(current, now + timedelta(hours=1), rows + 100, spec) == DueRefresh(
        RefreshTrigger.ROWS, 1
    )
    assert refresh_due(current, at(25, "03:00"), rows, spec) == DueRefresh(RefreshTrigger.DAILY, 1)
    ok = RefreshRecord(
        started_at=at(25, "03:00"),
        finished_at=at(25, "03:01"),
        trigger=RefreshTrigger.DAILY,
        outcome=RefreshOutcome.REJECTED,
    )
    assert after_attempt(current, ok, spec, rows).consecutive_failures == 0


# --- the state file and the row count ----------------------------------------------------------
def test_state_file_is_versioned_and_strict(tmp_path: Path) -> None:
    assert read_scheduler_state(tmp_path) is None
    path = tmp_path / STATE_FILE
    path.parent.mkdir(parents=True)
    written = state(turn_started_at=at(24, "03:00"), last_refresh=_failed(at(24, "03:00"), 1))
    path.write_text(written.model_dump_json())
    assert read_scheduler_state(tmp_path) == written
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["last_refresh"]["outcome"] == "failed"
    path.write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(SchedulerError, match=r"state.json is not a valid scheduler state"):
        read_scheduler_state(tmp_path)


def test_row_counter_reads_footers_and_sees_new_and_rewritten_files(tmp_path: Path) -> None:
    counter = TimelineRowCounter(tmp_path)
    assert counter.count() == 0
    rows = discrete_rows({"actions": ACTIONS}, np.random.default_rng(0), 50)
    write_timeline_partition(rows, tmp_path, "2026-11-23")
    assert counter.count() == 50
    write_timeline_partition(rows[:20], tmp_path, "2026-11-24")
    assert counter.count() == 70
    write_timeline_partition(rows[:30], tmp_path, "2026-11-24")  # a replayed batch, rewritten in place
    assert counter.count() == 80


# --- the scheduler on real parts ---------------------------------------------------------------
def test_a_failing_refresh_keeps_the_deployed_model_alerts_and_retries(tmp_path: Path) -> None:
    env = app_env(tmp_path)
    write_discrete(env)
    clock = Clock(START)
    scheduler = RefreshScheduler(env, clock=clock, progress=lambda line: None)
    registry = ModelRegistry(env.registry_dir)
    before = refresh_inputs(env, START, train_days=7)
    assert (before.deployed, before.logging_policy, len(before.evaluation_rows)) == (None, "logging-v0", ROWS)

    first = scheduler.poll()  # never refreshed: due at once, trains, deploys
    assert first is not None and first.outcome is RefreshOutcome.DEPLOYED, first.reasons
    deployed = registry.deployed()
    assert deployed == first.chosen_version == first.candidate_versions[0]
    assert (first.trigger, first.logging_policy, first.confidence) == (
        RefreshTrigger.DAILY,
        "logging-v0",
        0.9,
    )
    after = refresh_inputs(env, START, train_days=7)
    assert after.logging_policy == deployed and after.previous_report.model_version == deployed  # swing check
    pointer = (env.registry_dir / "deployed.json").read_bytes()

    clock.now = at(24, "23:59")
    assert scheduler.poll() is None
    # The next daily turn: nothing logged by the deployed model yet, so nothing to judge a candidate on.
    clock.now = at(25, "03:00")
    skipped = scheduler.poll()
    assert skipped is not None and skipped.outcome is RefreshOutcome.SKIPPED
    assert (
        f"0 rows logged by {deployed} in the last 7 days to evaluate on, fewer than gate.min_rows 20"
        in (skipped.reasons[0])
    )

    # Then the deployed model logs continuous decisions, which the discrete trainer refuses.
    shape = {"actions": ["torque"], "algorithm": {"action_low": [-1.0], "action_high": [1.0]}}
    served = continuous_rows(shape, np.random.default_rng(1), 50)
    for row in served:
        row["model_version"] = deployed
    write_timeline_partition(served, env.stream_config().output_dir, "2026-11-25")
    clock.now = at(26, "03:00")
    attempts = []
    for wait_s in (0, 60, 300):  # the first try, then after each of retry_backoff_s [60, 300]
        clock.now += timedelta(seconds=wait_s)
        record = scheduler.poll()
        assert record is not None
        attempts.append(record)
    assert [r.outcome for r in attempts] == [RefreshOutcome.FAILED] * 3
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert "RefreshError" in attempts[0].error and "continuous" in attempts[0].error

    # The deploy pointer never moved and no candidate was registered.
    assert (env.registry_dir / "deployed.json").read_bytes() == pointer
    assert registry.list_versions() == [deployed]
    # Each failure is an alert line next to the gate's; the state says failed, retries spent.
    alerts = [json.loads(line) for line in (env.reports_dir / "alerts.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["attempt"]) for a in alerts] == [("refresh_failed", i) for i in (1, 2, 3)]
    assert datetime.fromisoformat(alerts[0]["retry_at"]) == at(26, "03:01")
    assert alerts[2]["retry_at"] is None and "the deployed model keeps serving" in alerts[2]["message"]
    saved = read_scheduler_state(env.run_dir)
    assert saved.last_refresh.outcome is RefreshOutcome.FAILED and saved.consecutive_failures == 3
    assert saved.retry_at is None and saved.next_daily_at == at(27, "03:00")
    assert (
        saved.rows == RowTrigger(rows_since_last=0, every_new_rows=None)
        and saved.rows_at_last_refresh == ROWS + 50
    )
    clock.now = at(26, "12:00")
    assert scheduler.poll() is None  # waits for its next turn


def test_a_grid_evaluates_each_candidate_at_the_bonferroni_confidence_and_deploys_the_best(
    tmp_path: Path,
) -> None:
    grid = [{"ridge_lambda": 3000.0}, {"ridge_lambda": 0.01}, {"ridge_lambda": 300.0}]
    env = app_env(tmp_path, candidates=grid)
    write_discrete(env)
    scheduler = RefreshScheduler(env, clock=Clock(START), progress=lambda line: None)

    record = scheduler.poll()

    each = bonferroni_confidence(0.9, 3)
    assert each == pytest.approx(1 - 0.1 / 3)
    assert record is not None and record.confidence == pytest.approx(each)
    assert len(record.candidate_versions) == 3
    registry = ModelRegistry(env.registry_dir)
    configs = [registry.metadata(v).algorithm_config for v in record.candidate_versions]
    assert [(c["ridge_lambda"], c["alpha"]) for c in configs] == [(3000.0, 1.0), (0.01, 1.0), (300.0, 1.0)]
    bounds, decisions = {}, {}
    for version in record.candidate_versions:
        report = load_report(env.reports_dir / version)
        assert report.headline_estimate.confidence == pytest.approx(each)
        decisions[version] = json.loads((env.reports_dir / version / "gate.json").read_text())
        assert any(
            "Bonferroni correction for choosing among 3 candidates" in n for n in decisions[version]["notes"]
        )
        if decisions[version]["approved"]:
            bounds[version] = report.headline_estimate.normalized_ci_low
    assert len(set(bounds.values())) == 3, "the permissive gate approves all three, which rank apart"
    best = max(bounds, key=bounds.get)
    assert record.outcome is RefreshOutcome.DEPLOYED and record.chosen_version == best == registry.deployed()
    assert [v for v, d in decisions.items() if d["deployed"]] == [best]  # only the chosen one
    assert any("Bonferroni" in reason and best in reason for reason in record.reasons)
    assert (
        registry.deployment_state().history[-1].reason.startswith("CPE gate approved, best of 3 candidates")
    )


def test_too_few_rows_skip_the_refresh_and_say_why(tmp_path: Path) -> None:
    env = app_env(tmp_path)
    write_discrete(env, n=60)
    scheduler = RefreshScheduler(env, clock=Clock(START), progress=lambda line: None)
    record = scheduler.poll()
    assert record is not None and record.outcome is RefreshOutcome.SKIPPED
    assert "60 timeline rows, fewer than min_training_rows 100" in record.reasons[0]
    assert ModelRegistry(env.registry_dir).list_versions() == []
    saved = read_scheduler_state(env.run_dir)
    assert (
        saved.last_refresh == record
        and saved.consecutive_failures == 0
        and saved.phase is SchedulerPhase.WAITING
    )


def test_schedule_command_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(
        "schema_version: 1\napp: shop\nfeatures: [{name: x}]\nactions: {kind: discrete, names: [a, b]}\n"
        "trainer: {type: linucb}\n"
    )
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "schedule", "--app", str(manifest), "--run-dir", str(run_dir)]
        + ["--poll-interval-s", "0.2"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            saved = read_scheduler_state(run_dir) if (run_dir / STATE_FILE).is_file() else None
            if saved is not None and saved.last_refresh is not None:
                break
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    saved = read_scheduler_state(run_dir)
    assert saved.phase is SchedulerPhase.STOPPED and saved.app == "shop"
    assert saved.last_refresh.outcome is RefreshOutcome.SKIPPED  # no timelines yet
    assert "fewer than min_training_rows" in saved.last_refresh.reasons[0]


def test_scheduler_needs_an_app(tmp_path: Path) -> None:
    env = Environment.from_config(load_config(), tmp_path)
    with pytest.raises(SchedulerError, match="--app"):
        RefreshScheduler(env)
