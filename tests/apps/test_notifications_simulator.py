"""The notifications app's simulator: it imports no streamrl stage (nor does anything it imports),
its manifest fits its world, and the bodies it sends are what serving and the stream accept, with
known values. Its HTTP and Kafka round trip runs in tests/infra/test_demo_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from app_imports import ROOT, STAGES, reached
from pydantic import TypeAdapter

from apps.notifications import simulator as sim_app
from apps.notifications.world import ACTIONS, FEATURE_NAMES, NotificationSim, NotificationSimConfig
from apps.rule_policy import RULE_POLICY, RuleDecisions
from contracts import RewardEvent, reward_value
from infra.manifest import load_manifest
from serving.schemas import BatchActRequest, BatchLoggedDecisionRequest, LoggedDecision

APP_DIR = ROOT / "apps" / "notifications"


def test_the_simulator_and_what_it_imports_import_no_streamrl_stage() -> None:
    seen, top_levels = reached("apps.notifications.simulator", APP_DIR / "simulator.py")
    assert not top_levels & STAGES, sorted(top_levels & STAGES)
    # What the app runs of this repository: its own folder, the HTTP/Kafka client and the rule.
    assert set(seen) == {
        "apps",
        "apps.notifications",
        "apps.notifications.simulator",
        "apps.notifications.world",
        "apps.app_client",
        "apps.rule_policy",
    }
    assert top_levels - {"apps"} <= {
        "__future__",
        "argparse",
        "json",
        "sys",
        "collections",
        "dataclasses",
        "datetime",
        "pathlib",
        "typing",
        "types",
        "httpx",
        "numpy",
        "yaml",
        "kafka",
        "pydantic",
    }


def test_the_manifest_validates_and_fits_the_world() -> None:
    manifest = load_manifest(APP_DIR / "manifest.yaml")
    assert manifest.app == "notifications"
    assert manifest.actions.names == list(ACTIONS)
    assert manifest.feature_names == list(FEATURE_NAMES)
    assert manifest.serving.day0.type == "none"  # day 0: the app's own rule, logged through /decisions
    assert manifest.refresh.every_new_rows == 4000 * 4  # one simulated day of the default users
    settings = sim_app.read_settings(APP_DIR / "manifest.yaml")
    assert settings.app == "notifications" and settings.rewards_topic == "notifications.rewards"
    assert settings.weights == dict(manifest.reward.metrics) == {"engaged": 1.0, "sent": -0.05}
    assert settings.route("act/batch") == "/v1/apps/notifications/act/batch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"reward": {"metrics": {"engaged": 1.0, "sent": -0.1}}},
            r"reward.metrics .* must be the world's reward",
        ),
        ({"actions": {"kind": "discrete", "names": ["push", "none"]}}, r"actions.names \['push', 'none'\]"),
        ({"features": [{"name": "slot"}]}, r"features \['slot'\] must be the world's"),
    ],
)
def test_a_manifest_that_does_not_fit_the_world_is_refused(
    tmp_path: Path, change: dict, message: str
) -> None:
    data = {**yaml.safe_load((APP_DIR / "manifest.yaml").read_text()), **change}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(sim_app.SimulatorError, match=message):
        sim_app.read_settings(path)
    # Refused before any connection is tried: main says why and exits 1.
    assert (
        sim_app.main(
            [
                "--url",
                "http://127.0.0.1:9",
                "--bootstrap",
                "127.0.0.1:9",
                "--day",
                "0",
                "--manifest",
                str(path),
            ]
        )
        == 1
    )


def test_bodies_are_what_serving_accepts_with_known_values() -> None:
    sim = NotificationSim(NotificationSimConfig(n_users=2))
    day = sim.start_day(3)
    features = sim.features(day, 1, np.array([True, False]))
    contexts = sim_app.slot_contexts(sim, day, 1, features)
    assert [c["entity_id"] for c in contexts] == ["user-000000", "user-000001"]
    assert [c["mdp_id"] for c in contexts] == ["user-000000:day3", "user-000001:day3"]  # one MDP per user-day
    assert [c["sequence_number"] for c in contexts] == [1, 1]  # the slot is the step
    assert contexts[0]["possible_actions"] == ["dont_send", "send"]
    assert list(contexts[0]["context_features"]) == list(FEATURE_NAMES)
    assert [c["context_features"]["sent_previous_slot"] for c in contexts] == [1.0, 0.0]
    assert [c["context_features"]["slot"] for c in contexts] == [1.0, 1.0]
    BatchActRequest.model_validate({"requests": contexts})

    decisions = RuleDecisions(send=np.array([True, False]), propensity=np.array([0.9, 0.1]))
    logged = sim_app.logged_decisions(contexts, decisions, RULE_POLICY)
    assert [(d["action"], d["action_probability"], d["policy"]) for d in logged] == [
        ("send", 0.9, "hand-written-rule"),
        ("dont_send", 0.1, "hand-written-rule"),
    ]
    request = BatchLoggedDecisionRequest.model_validate({"decisions": logged})
    assert TypeAdapter(LoggedDecision).validate_python(logged[1]).action == "dont_send"
    assert request.decisions[0].mdp_id == "user-000000:day3"


@pytest.mark.parametrize(
    ("engaged", "sent", "reward"),
    [(True, True, 0.95), (True, False, 1.0), (False, True, -0.05), (False, False, 0.0)],
)
def test_reward_events_carry_only_metrics_and_the_manifest_weighs_them(
    engaged: bool, sent: bool, reward: float
) -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    body = sim_app.reward_event("r-1", engaged, sent, at)
    assert body == {
        "schema_version": 1,
        "request_id": "r-1",
        "timestamp": "2026-11-30T12:00:00+00:00",
        "metrics": {"engaged": float(engaged), "sent": float(sent)},
    }
    event = RewardEvent.model_validate(body)
    weights = dict(load_manifest(APP_DIR / "manifest.yaml").reward.metrics)
    assert reward_value(event, weights) == reward  # engaged − 0.05 × sent, as the world scores it
    assert (
        NotificationSim(NotificationSimConfig(n_users=1)).reward(np.array([engaged]), np.array([sent]))[0]
        == reward
    )


def test_the_day_summary_has_exact_values() -> None:
    result = sim_app.DayResult(
        app="notifications",
        day=2,
        users=2,
        decisions=8,
        total_reward=3.0,
        sends=2,
        rule_reward=0.41,
        oracle_reward=0.48,
        model_versions={"hand-written-rule": 4, "m0001": 4},
        reward_by_version={"hand-written-rule": 1.0, "m0001": 2.0},
        request_ids=[f"r-{i}" for i in range(8)],
    )
    assert result.summary(Path("ids.txt")) == {
        "app": "notifications",
        "day": 2,
        "users": 2,
        "decisions": 8,
        "realized_reward": 0.375,
        "rule_reward": 0.41,
        "oracle_reward": 0.48,
        "send_share": 0.25,
        "model_versions": {"hand-written-rule": 4, "m0001": 4},
        "realized_by_version": {"hand-written-rule": 0.25, "m0001": 0.5},  # 1/4, 2/4
        "request_ids": 8,
        "request_ids_file": "ids.txt",
    }


def test_a_day_of_the_same_users_replays_exactly() -> None:
    """Day k depends only on (seed, k) and (rule seed, k): what the rule decides and what users do
    is the same in a fresh simulator, whichever days were played before."""
    config = NotificationSimConfig(n_users=50, seed=3, rule_seed=11)

    def rule_day(sim: NotificationSim, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        day, rule = sim.start_day(k), sim.rule()
        rng = np.random.default_rng((config.rule_seed, k))
        sent_previous, sends, engaged = np.zeros(50, bool), [], []
        for slot in range(config.slots_per_day):
            send = rule.decide(sim.features(day, slot, sent_previous), rng).send
            sends.append(send)
            engaged.append(sim.draw_engagement(day, slot, send, sent_previous))
            sent_previous = send
        return np.array(sends), np.array(engaged), sim.policy_value(day, rule.send_probability)

    played = NotificationSim(config)
    for k in range(3):
        rule_day(played, k)
    again = rule_day(played, 1)
    fresh = rule_day(NotificationSim(config), 1)
    np.testing.assert_array_equal(again[0], fresh[0])
    np.testing.assert_array_equal(again[1], fresh[1])
    assert again[2] == fresh[2]
    # Another seed draws other users.
    other = rule_day(NotificationSim(config.model_copy(update={"seed": 4})), 1)
    assert other[2] != fresh[2]
