"""The recommender example app: its click model by hand, its exact values against Monte Carlo, its
manifest, the bodies it sends, that it runs no streamrl stage, and that a parametric DQN
trained on its uniformly logged requests closes most of the uniform → oracle gap."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from app_imports import STAGES, reached
from pydantic import TypeAdapter

from contracts import RewardEvent, reward_value
from features import fit_normalization, frame_from_feature_maps
from infra.manifest import load_manifest
from serving.schemas import ActRequest, ParametricActRequest
from trainer import GreedyExploration, ModelRegistry, load_registered_policy, train_and_register

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "recommender"


def _load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


sim = _load_by_path("recommender_simulator", APP_DIR / "simulator.py")

# A 3-item world small enough to compute by hand: w = (2, 1, 0.5), bias = −1,
#   items z0 = (1, 0, 0), z1 = (0, 1, 0), z2 = (1, 1, 0); quality q = (0, 0.5, −0.5).
# User A: x = (1, 0, 0), a = 0      → Σ w·x·z = 2, 0, 2     → logits 1, −0.5, 0.5
# User B: x = (0, 2, 0), a = −0.5   → Σ w·x·z = 0, 2, 2     → logits −1.5, 1, 0
# σ(1) = 0.7310585786, σ(−0.5) = 0.3775406688, σ(0.5) = 0.6224593312, σ(−1.5) = 0.1824255238, σ(0) = 0.5
TINY = sim.RecommenderWorld(
    item_topics=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
    item_quality=np.array([0.0, 0.5, -0.5]),
    topic_weights=np.array([2.0, 1.0, 0.5]),
    bias=-1.0,
)
USER_A = sim.User("user-a", np.array([1.0, 0.0, 0.0]), 0.0)
USER_B = sim.User("user-b", np.array([0.0, 2.0, 0.0]), -0.5)
REQUESTS = [sim.Request(USER_A, (0, 1, 2)), sim.Request(USER_B, (2, 0))]


def test_click_probabilities_by_hand() -> None:
    np.testing.assert_allclose(
        sim.click_probabilities(TINY, REQUESTS[0]), [0.7310585786, 0.3775406688, 0.6224593312], atol=1e-9
    )
    np.testing.assert_allclose(sim.click_probabilities(TINY, REQUESTS[1]), [0.5, 0.1824255238], atol=1e-9)
    assert sim.click_probabilities(TINY, sim.Request(USER_B, (1,)))[0] == pytest.approx(
        0.7310585786, abs=1e-9
    )


def test_uniform_oracle_and_policy_values_by_hand() -> None:
    # oracle: σ(1) for A, σ(0) for B → (0.7310585786 + 0.5) / 2
    assert sim.oracle_value(TINY, REQUESTS) == pytest.approx(0.6155292893, abs=1e-9)
    # uniform: (0.7310585786 + 0.3775406688 + 0.6224593312) / 3 = 0.5770195262 and
    #          (0.5 + 0.1824255238) / 2 = 0.3412127619 → 0.4591161441
    assert sim.uniform_value(TINY, REQUESTS) == pytest.approx(0.4591161441, abs=1e-9)
    # showing item 2 to A and item 0 to B: (0.6224593312 + 0.1824255238) / 2
    assert sim.policy_value(TINY, REQUESTS, [2, 0]) == pytest.approx(0.4024424275, abs=1e-9)
    assert sim.policy_value(TINY, REQUESTS, [0, 2]) == pytest.approx(
        sim.oracle_value(TINY, REQUESTS), abs=1e-12
    )
    with pytest.raises(sim.SimulatorError, match=r"item 1 is not among the request's candidates \[2, 0\]"):
        sim.policy_value(TINY, REQUESTS, [0, 1])
    with pytest.raises(sim.SimulatorError, match="1 items for 2 requests"):
        sim.policy_value(TINY, REQUESTS, [0])


def test_candidates_and_chosen_ids() -> None:
    assert TINY.candidate(1) == {
        "id": "item-0001",
        "features": {"item_topic_0": 0.0, "item_topic_1": 1.0, "item_topic_2": 0.0, "item_quality": 0.5},
    }
    assert USER_B.features() == {
        "user_topic_0": 0.0,
        "user_topic_1": 2.0,
        "user_topic_2": 0.0,
        "user_activity": -0.5,
    }
    assert sim.chosen_item(REQUESTS[1], "item-0000") == 0
    with pytest.raises(
        sim.SimulatorError, match=r"'item-0001', which was not offered; offered \['item-0002', 'item-0000'\]"
    ):
        sim.chosen_item(REQUESTS[1], "item-0001")


def test_exact_values_match_a_monte_carlo_estimate() -> None:
    world = sim.default_world()
    rng = np.random.default_rng(3)
    requests = sim.draw_requests(rng, world, 500)
    best = [r.items[int(np.argmax(sim.click_probabilities(world, r)))] for r in requests]
    uniform_clicks, oracle_clicks = [], []
    for _ in range(40):  # 40 draws per request: 20,000 per estimate
        for request, item in zip(requests, best, strict=True):
            shown = request.items[int(rng.integers(len(request.items)))]
            uniform_clicks.append(sim.draw_click(rng, world, request, shown))
            oracle_clicks.append(sim.draw_click(rng, world, request, item))
    for clicks, exact in (
        (uniform_clicks, sim.uniform_value(world, requests)),
        (oracle_clicks, sim.oracle_value(world, requests)),
    ):
        standard_error = np.std(clicks) / math.sqrt(len(clicks))
        assert abs(np.mean(clicks) - exact) < 4.0 * standard_error, (np.mean(clicks), exact, standard_error)
    assert sim.oracle_value(world, requests) > sim.uniform_value(world, requests) + 0.2


def test_world_is_fixed_and_requests_are_seeded_with_fresh_ids() -> None:
    world = sim.default_world()
    np.testing.assert_array_equal(world.item_topics, sim.default_world().item_topics)
    assert world.size == sim.CATALOG_SIZE
    first = sim.draw_requests(np.random.default_rng(7), world, 400)
    again = sim.draw_requests(np.random.default_rng(7), world, 400)
    assert [r.items for r in first] == [r.items for r in again]
    assert [r.user.features() for r in first] == [r.user.features() for r in again]
    assert not {r.user.id for r in first} & {r.user.id for r in again}  # uuid4: unique per run
    assert len({r.user.id for r in first}) <= 100  # one user per four decisions
    for request in first:
        assert 4 <= len(request.items) <= 8 and len(set(request.items)) == len(request.items)
    with pytest.raises(sim.SimulatorError, match="catalog of >= 8 items, got 3"):
        sim.draw_requests(np.random.default_rng(0), TINY, 1)


def test_manifest_validates_and_matches_the_world() -> None:
    manifest = load_manifest(APP_DIR / "manifest.yaml")
    assert manifest.app == "recommender"
    assert manifest.serving.port == 18082
    assert manifest.actions.kind == "parametric"
    assert manifest.actions.candidate_features == list(sim.ITEM_FEATURES)
    assert manifest.feature_names == list(sim.USER_FEATURES)
    assert manifest.trainer.type == "parametric_dqn"
    assert manifest.reward.metrics == sim.REWARD_WEIGHTS
    assert manifest.refresh.daily_at_utc == "03:00" and manifest.refresh.every_new_rows == 1500
    settings = sim.read_settings(APP_DIR / "manifest.yaml")
    assert settings.app == "recommender" and settings.rewards_topic == "recommender.rewards"


def test_a_manifest_that_does_not_fit_the_world_is_refused(tmp_path: Path) -> None:
    text = (APP_DIR / "manifest.yaml").read_text().replace("item_quality]", "item_price]")
    (tmp_path / "manifest.yaml").write_text(text)
    with pytest.raises(sim.SimulatorError, match="must be the simulator's"):
        sim.read_settings(tmp_path / "manifest.yaml")


def test_the_bodies_it_sends_are_what_streamrl_accepts() -> None:
    bodies = [sim.act_request(TINY, r) for r in REQUESTS]
    for body, request in zip(bodies, REQUESTS, strict=True):
        parsed = TypeAdapter(ActRequest).validate_python(body)
        assert isinstance(parsed, ParametricActRequest)
        assert parsed.mdp_id == body["request_id"] and parsed.sequence_number == 0
        assert [c.id for c in parsed.candidates] == [sim.item_id(i) for i in request.items]
    assert len({b["request_id"] for b in bodies}) == 2
    event = RewardEvent.model_validate_json(
        json.dumps(sim.reward_event(bodies[0]["request_id"], 1.0, sim.REWARD_WEIGHTS))
    )
    assert event.timestamp.utcoffset() is not None and event.metrics == {"click": 1.0}
    assert event.reward == reward_value(event, sim.REWARD_WEIGHTS) == 1.0


def test_the_simulator_and_what_it_imports_import_no_streamrl_stage() -> None:
    """The app runs no stage: only its own file and the HTTP/Kafka client (`apps.app_client`)."""
    seen, top_levels = reached("recommender_simulator", APP_DIR / "simulator.py")
    assert not top_levels & STAGES, sorted(top_levels & STAGES)
    assert seen == {"recommender_simulator", "apps", "apps.app_client"}


def _uniform_timelines(world, decisions: int, seed: int) -> pd.DataFrame:
    """What the stream job makes of uniformly served requests: one-step, terminal parametric rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, request in enumerate(sim.draw_requests(rng, world, decisions)):
        candidates = [world.candidate(c) for c in request.items]
        shown = int(rng.integers(len(candidates)))
        rows.append(
            {
                "mdp_id": f"request-{i}",
                "sequence_number": 0,
                "state_features": request.user.features(),
                "action": candidates[shown]["id"],
                "action_probability": 1.0 / len(candidates),
                "action_features": candidates[shown]["features"],
                "possible_actions": [c["id"] for c in candidates],
                "possible_action_features": [c["features"] for c in candidates],
                "reward": sim.draw_click(rng, world, request, request.items[shown]),
                "next_state_features": {},
                "possible_next_actions": [],
                "possible_next_action_features": [],
                "not_terminal": False,
            }
        )
    return pd.DataFrame(rows)


def test_the_manifest_trainer_learns_most_of_the_gap_from_uniform_logs(tmp_path: Path) -> None:
    manifest = load_manifest(APP_DIR / "manifest.yaml")
    world = sim.default_world()
    timelines = _uniform_timelines(world, 1500, seed=0)
    spec = fit_normalization(frame_from_feature_maps(list(timelines["state_features"])))
    registry = ModelRegistry(tmp_path / "registry")
    metadata = train_and_register(
        timelines, spec, None, manifest.trainer, registry, tmp_path / "logs", GreedyExploration()
    )
    policy = load_registered_policy(registry, metadata.version)
    requests = sim.draw_requests(np.random.default_rng(99), world, 2000)
    candidates, mask = policy.candidates(
        [[world.candidate(c)["features"] for c in r.items] for r in requests]
    )
    scores = policy.scores(policy.features([r.user.features() for r in requests]), candidates, mask)
    chosen = [r.items[int(np.argmax(scores[i, : len(r.items)]))] for i, r in enumerate(requests)]
    uniform, oracle = sim.uniform_value(world, requests), sim.oracle_value(world, requests)
    gap_closed = (sim.policy_value(world, requests, chosen) - uniform) / (oracle - uniform)
    assert gap_closed > 0.7, gap_closed
