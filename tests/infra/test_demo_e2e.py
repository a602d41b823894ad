"""The whole loop on the real stack: broker, Redis, Spark, Feast, onnxruntime, faust.

A small population for two days: day 0 served by the hand-written rule through serving,
decisions and rewards through Kafka, timelines from Spark, a nightly refresh that trains,
evaluates and gates; day 1 served by whatever the gate left deployed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.config import load_config
from infra.demo import run_demo
from infra.environment import Environment
from monitoring.run import latest_revisions, tail_metrics
from stream import load_timelines
from tests.helpers import free_port
from trainer import ModelRegistry

pytestmark = pytest.mark.e2e

USERS = 150
DAYS = 2


@pytest.fixture(scope="module")
def demo_run(local_stack, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("demo")
    config = load_config(
        overrides={
            "demo": {"days": DAYS, "simulator": {"n_users": USERS}, "request_batch_size": 200},
            "serving": {"port": free_port()},
            "monitoring": {"web_port": free_port(), "window_s": 5},
            "evaluation": {"min_rows": 100, "gate": {"min_effective_sample_size": 20}},
            "trainer": {"num_epochs": 5},
        }
    )
    config = config.model_copy(update={"stack": local_stack.config})
    lines: list[str] = []
    summaries = run_demo(Environment.from_config(config, run_dir), progress=lines.append)
    return run_dir, summaries, lines, config


def test_every_decision_becomes_a_timeline_row(demo_run) -> None:
    run_dir, summaries, _, _ = demo_run
    assert [s.day for s in summaries] == list(range(DAYS))
    for summary in summaries:
        assert summary.decisions == USERS * 4
        assert summary.timeline_rows == summary.decisions
    timelines = load_timelines(run_dir / "timelines")
    assert len(timelines) == DAYS * USERS * 4
    assert timelines["request_id"].is_unique
    terminal = timelines[~timelines["not_terminal"]]
    assert len(terminal) == DAYS * USERS  # one terminal row per user-day MDP, kept
    assert (terminal["time_diff"] == 0).all()


def test_summary_json_is_the_table(demo_run) -> None:
    run_dir, summaries, lines, _ = demo_run
    days = json.loads((run_dir / "summary.json").read_text())
    assert len(days) == DAYS
    required = {
        "day",
        "model_version",
        "realized_reward",
        "logging_reward",
        "oracle_reward",
        "cpe_estimate",
        "cpe_ci_low",
        "cpe_ci_high",
        "gate",
    }
    for row, summary in zip(days, summaries, strict=True):
        assert required <= row.keys()
        assert row["model_version"] == summary.model_version
        assert row["gate"] in {"approved", "rejected"}
        assert row["oracle_reward"] >= row["logging_reward"]
        assert row["cpe_ci_low"] <= row["cpe_estimate"] <= row["cpe_ci_high"]
    assert any("CPE estimate" in line for line in lines)


def test_gate_decides_what_serves_next_day(demo_run) -> None:
    run_dir, summaries, _, _ = demo_run
    registry = ModelRegistry(run_dir / "registry")
    assert len(registry.list_versions()) == 1 + DAYS  # the rule + one candidate per night
    first_night = summaries[0]
    expected_day1 = (
        first_night.candidate_version if first_night.gate == "approved" else summaries[0].model_version
    )
    assert summaries[1].model_version == expected_day1
    for summary in summaries:
        report_dir = run_dir / "reports" / summary.candidate_version
        gate = json.loads((report_dir / "gate.json").read_text())
        assert gate["approved"] == (summary.gate == "approved")
        assert (report_dir / "cpe_report.json").exists()


def test_monitoring_counted_the_served_decisions(demo_run) -> None:
    _, summaries, _, config = demo_run
    run_topics = json.loads((Path(demo_run[0]) / "environment.json").read_text())["topics"]
    windows = latest_revisions(
        tail_metrics(config.stack.bootstrap_servers, run_topics["metrics"], timeout_s=20)
    )
    counted = {}
    for window in windows:
        counted[window.model_version] = counted.get(window.model_version, 0) + window.decisions
    assert counted.get(summaries[0].model_version, 0) > 0
