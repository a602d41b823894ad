"""The whole loop on the real stack, as `streamrl demo` runs it: the notifications example through
`streamrl up` (broker, Redis, Spark, Feast, onnxruntime, faust, the refresh scheduler), its
simulator a subprocess that talks HTTP and Kafka only.

A small population for two days: on day 0 no model exists, the app decides with its own
hand-written rule and logs each decision through `POST /v1/apps/notifications/decisions/batch`;
decisions and rewards go through Kafka, timelines come from Spark, the scheduler's row trigger
refreshes after the day (train, evaluate, gate, deploy); serving hot-swaps, and day 1 is served
through `/act/batch` by the model the gate deployed (or the rule again, if it rejected). Every
night's candidate must beat the rule on the simulator's exact expected reward, and day 1's realized
reward must be that of the policy the gate left in charge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from apps.notifications import (
    ACTIONS,
    FEATURE_NAMES,
    SEND,
    NotificationSim,
    NotificationSimConfig,
    SendProbability,
    mdp_id_for,
)
from apps.rule_policy import RULE_POLICY
from infra.config import load_config
from infra.demo import DemoPlan, run_demo
from infra.environment import Environment
from infra.manifest import load_manifest
from monitoring.run import latest_revisions, tail_metrics
from stream import load_timelines
from tests.helpers import free_port
from trainer import ModelRegistry, OnnxPolicy

pytestmark = pytest.mark.e2e

USERS = 150
DAYS = 2
# The day-0 rule explores more than the demo's (ε 0.2): with 75 held-out users a night, that is
# what gives the gate's DR interval enough effective samples (~140 of 300 instead of ~80) to
# approve a better model on the first night.
RULE_EPSILON = 0.5
# The app's draws while it decides by the rule (day 0). Observed with this config, rule seeds 1234,
# 1, 2, 3 (and 7-derived): the first-night gate rejected, approved, approved, approved, rejected
# (normalized DR lower bounds 0.998 and 0.993 when rejected); seed 1 is pinned below.
RULE_SEED = 1
# Every candidate must close this share of the gap between the day-0 rule and the oracle, on the
# exact expected reward per decision of day 1's users. Observed (150 users, ε 0.5, 20 epochs;
# simulator/serving seeds 7/1234 as here, then 1/1 … 5/5): first-night candidates closed 80%, 75%,
# 80%, 77%, 67%, 49%; second-night ones 78%, 65%, 75%, 76%, 77%, 64%. The run is deterministic
# for given seeds (repeated runs register the same model hashes). The first-night gate approved
# for 4 of those 6 seeds, so it can reject. Since the app logs the rule itself (rule seeds 1234,
# 1, 2, 3): first-night candidates closed 73%, 77%, 79%, 71%; second-night ones 77%, 82%, 76%, 76%.
MIN_GAP_CLOSED = 0.3
# Day 1's realized reward per decision must beat the rule's exact value on the same users by this.
REALIZED_MARGIN = 0.02
# The world and rule the simulator ran with (its --users, --rule-seed, --rule-epsilon; seed 7).
SIMULATOR = NotificationSimConfig(n_users=USERS, rule_epsilon=RULE_EPSILON, rule_seed=RULE_SEED)


@pytest.fixture(scope="module")
def demo_run(local_stack, tmp_path_factory: pytest.TempPathFactory):
    """`run_demo`'s folder (the app's under <folder>/notifications), its summaries and printed lines."""
    run_dir = tmp_path_factory.mktemp("demo")
    plan = DemoPlan(
        days=DAYS,
        users=USERS,
        rule_seed=RULE_SEED,
        rule_epsilon=RULE_EPSILON,
        batch_size=200,
        manifest_overrides={
            "serving": {"port": free_port()},
            "monitoring": {"web_port": free_port(), "window_s": 5},
            # This test exercises the loop's plumbing — approve, hot-swap, serve, beat the rule — on a
            # small day. A user's day is 4 decisions with fatigue, so by default the gate judges a
            # sequential estimate, whose 4-step weights leave 75 held-out user-days an effective
            # sample size near 10 and a rejection (docs/demo.md: even 2,000 user-days cannot vouch
            # for this candidate). The test's manifest therefore declares the one-step view, the
            # gate of before issue 14, knowing it is ~5 % optimistic here.
            "gate": {
                "problem": "one_step",
                "headline": "dr",
                "min_rows": 100,
                "min_effective_sample_size": 20,
            },
            "trainer": {"num_epochs": 20},
        },
    )
    config = load_config().model_copy(update={"stack": local_stack.config})
    lines: list[str] = []
    summaries = run_demo(Environment.from_config(config, run_dir), plan, progress=lines.append)
    return run_dir, summaries, lines


def _app_dir(run_dir: Path) -> Path:
    return run_dir / "notifications"


def test_the_demo_ran_the_app_through_up_and_down(demo_run) -> None:
    run_dir, _, lines = demo_run
    manifest = load_manifest(run_dir / "manifest.yaml")
    assert manifest.gate.problem == "one_step"  # what this test declares, in the manifest the app ran
    assert manifest.refresh.every_new_rows == USERS * 4 and manifest.refresh.daily_at_utc is None
    assert "[notifications] started serving, stream, ingest, monitor, scheduler" in "\n".join(lines)
    assert not (_app_dir(run_dir) / "processes.json").exists()  # `streamrl down` stopped what up started
    for day in range(DAYS):  # the simulator's own line of each day
        line = json.loads((run_dir / "simulator" / f"day{day}.json").read_text())
        assert line["app"] == "notifications" and line["decisions"] == USERS * 4 == line["request_ids"]


def test_every_decision_becomes_a_timeline_row(demo_run) -> None:
    run_dir, summaries, _ = demo_run
    assert [s.day for s in summaries] == list(range(DAYS))
    for summary in summaries:
        assert summary.decisions == USERS * 4
        assert summary.timeline_rows == summary.decisions
    timelines = load_timelines(_app_dir(run_dir) / "timelines")
    assert len(timelines) == DAYS * USERS * 4
    assert timelines["request_id"].is_unique
    terminal = timelines[~timelines["not_terminal"]]
    assert len(terminal) == DAYS * USERS  # one terminal row per user-day MDP, kept
    assert (terminal["time_diff"] == 0).all()


def test_summary_json_is_the_table(demo_run) -> None:
    run_dir, summaries, lines = demo_run
    days = json.loads((run_dir / "summary.json").read_text())
    assert len(days) == DAYS
    required = {
        "day",
        "model_version",
        "realized_reward",
        "logging_reward",
        "oracle_reward",
        "cpe_estimator",
        "cpe_estimate",
        "cpe_ci_low",
        "cpe_ci_high",
        "gate",
    }
    for row, summary in zip(days, summaries, strict=True):
        assert required <= row.keys()
        assert row["model_version"] == summary.model_version
        assert row["gate"] in {"approved", "canary", "rejected"}
        assert row["oracle_reward"] >= row["logging_reward"]
        assert row["cpe_ci_low"] <= row["cpe_estimate"] <= row["cpe_ci_high"]
    assert any("CPE estimate" in line for line in lines)


def test_gate_decides_what_serves_next_day(demo_run) -> None:
    run_dir, summaries, _ = demo_run
    registry = ModelRegistry(_app_dir(run_dir) / "registry")
    assert len(registry.list_versions()) == DAYS  # one candidate per night; the rule is no model
    assert summaries[0].model_version == RULE_POLICY
    first_night = summaries[0]
    expected_day1 = (
        first_night.candidate_version if first_night.gate == "approved" else summaries[0].model_version
    )
    assert summaries[1].model_version == expected_day1
    for summary in summaries:
        report_dir = _app_dir(run_dir) / "reports" / summary.candidate_version
        gate = json.loads((report_dir / "gate.json").read_text())
        assert gate["approved"] == (summary.gate == "approved")
        assert (report_dir / "cpe_report.json").exists()


def test_monitoring_counted_the_served_decisions(demo_run, local_stack) -> None:
    run_dir, summaries, _ = demo_run
    topics = load_manifest(run_dir / "manifest.yaml").topics
    windows = latest_revisions(tail_metrics(local_stack.bootstrap_servers, topics.metrics, timeout_s=20))
    counted = {}
    for window in windows:
        counted[window.model_version] = counted.get(window.model_version, 0) + window.decisions
    assert counted.get(summaries[0].model_version, 0) > 0


def _served_send_probability(policy: OnnxPolicy) -> SendProbability:
    """P(send) of a registered model as serving samples it: ONNX Q-values + the model's exploration."""
    send = policy.metadata.actions.index(SEND)

    def send_probability(features: np.ndarray) -> np.ndarray:
        maps = [dict(zip(FEATURE_NAMES, map(float, row), strict=True)) for row in features]
        mask = policy.possible_mask([list(ACTIONS)] * len(maps))
        return policy.probabilities(policy.features(maps), mask)[:, send]

    return send_probability


def test_the_loop_learns_and_the_gate_decides_who_serves(demo_run) -> None:
    run_dir, summaries, _ = demo_run
    registry = ModelRegistry(_app_dir(run_dir) / "registry")
    sim = NotificationSim(SIMULATOR)
    day = sim.start_day(1)

    def exact_value(version: str) -> float:
        """Expected reward per decision of a registered model as served, on day 1's users (no noise)."""
        return sim.policy_value(day, _served_send_probability(OnnxPolicy.load(registry, version)))

    rule_version = summaries[0].model_version
    rule_value = sim.policy_value(day, sim.rule().send_probability)
    # The table's baseline is the rule's exact value on the same users.
    assert rule_value == pytest.approx(summaries[1].logging_reward, abs=1e-9)
    oracle_value = sim.oracle_value(day)
    assert oracle_value > rule_value

    # The loop learns: every night's candidate closes a share of the gap to the oracle.
    candidate_values = {s.candidate_version: exact_value(s.candidate_version) for s in summaries}
    for version, value in candidate_values.items():
        closed = (value - rule_value) / (oracle_value - rule_value)
        assert closed >= MIN_GAP_CLOSED, f"{version} closed {closed:.0%} of the gap to the oracle"

    first_night, day1 = summaries[0], summaries[1]
    if first_night.gate == "approved":
        # Deployed: day 1 is served by the first night's candidate, which beat the rule above.
        assert day1.model_version == first_night.candidate_version
        served_value = candidate_values[first_night.candidate_version]
    else:
        # Rejected: the rule keeps serving day 1.
        assert day1.model_version == rule_version
        served_value = rule_value

    # What users got on day 1 is the served model's exact value up to sampling noise: within 4
    # standard errors of the mean of per-user rewards (users are independent, a user's slots not;
    # the spread across users also holds their different traits, so this SE is conservative).
    timelines = load_timelines(_app_dir(run_dir) / "timelines")
    day1_rows = timelines[timelines["mdp_id"].str.endswith(mdp_id_for("", 1))]
    assert set(day1_rows["model_version"]) == {day1.model_version}
    per_user = day1_rows.groupby("mdp_id")["reward"].mean()
    assert len(per_user) == USERS
    assert per_user.mean() == pytest.approx(day1.realized_reward, abs=1e-9)
    standard_error = per_user.std(ddof=1) / math.sqrt(len(per_user))
    assert abs(day1.realized_reward - served_value) <= 4 * standard_error

    # The seeded run deploys its first candidate, and what users then got beats the day-0 rule on
    # the same users. Simulator seed 7, rule seed 1 (this config) gave: gate approved, rule 0.4077,
    # candidate 0.4580 (exact, 77% of the gap), day-1 realized 0.4424 (+0.035). Rule seeds 2 and 3:
    # candidates at 79% and 71% of the gap, day-1 realized +0.038 and +0.026.
    assert first_night.gate == "approved", first_night.gate_reasons
    assert day1.realized_reward >= rule_value + REALIZED_MARGIN


def test_day0_logs_the_rules_decisions_with_their_exact_propensities(demo_run) -> None:
    """What `/v1/decisions` logged on day 0 is the app's rule: its label, and for every decision the
    probability the rule gives the logged action in the logged state (recomputed here by hand)."""
    run_dir, _, _ = demo_run
    timelines = load_timelines(_app_dir(run_dir) / "timelines")
    day0 = timelines[timelines["mdp_id"].str.endswith(mdp_id_for("", 0))]
    assert len(day0) == USERS * 4
    assert set(day0["model_version"]) == {RULE_POLICY}
    simulator = SIMULATOR
    eps = simulator.rule_epsilon
    for state, action, propensity in zip(
        day0["state_features"], day0["action"], day0["action_probability"], strict=True
    ):
        state = dict(state)
        greedy_send = (
            state["active_days_7d"] <= simulator.rule_max_active_days and state["sent_previous_slot"] == 0
        )
        p_send = 1 - eps / 2 if greedy_send else eps / 2
        assert propensity == pytest.approx(p_send if action == SEND else 1 - p_send, abs=1e-12)
