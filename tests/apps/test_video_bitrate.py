"""The video_bitrate example app: its world by hand, its exact values against Monte Carlo, its
manifest, the bodies it sends, that it runs no streamrl stage, and that a DQN trained on its
uniformly logged decisions closes most of the uniform → oracle gap."""

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
from serving.schemas import ActRequest
from trainer import GreedyExploration, ModelRegistry, load_registered_policy, train_and_register

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "video_bitrate"


def _load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


sim = _load_by_path("video_bitrate_simulator", APP_DIR / "simulator.py")

# One context by hand: B = 2 Mbps, S = 1 s buffered, last chunk at L = 1.5 Mbps. With CHUNK_S = 2,
# download_s = 2·b / (2·f) = b / f and rebuffer_s = max(0, b/f − 1) for f in (0.5, 0.8, 1.0, 1.2):
#   level  b     b/f                      rebuffer_s            mean    quality=ln(10b)  change=|ln(b/1.5)|
#   360p   0.75  1.5, 0.9375, 0.75, 0.625 0.5, 0, 0, 0          0.125   2.0149030205     ln 2 = 0.6931471806
#   480p   1.5   3, 1.875, 1.5, 1.25      2, 0.875, 0.5, 0.25   0.90625 2.7080502011     0
#   720p   3     6, 3.75, 3, 2.5          5, 2.75, 2, 1.5       2.8125  3.4011973817     ln 2
#   1080p  6     12, 7.5, 6, 5            11, 6.5, 5, 4         6.625   4.0943445622     ln 4 = 1.3862943611
#   2160p  12    24, 15, 12, 10           23, 14, 11, 9         14.25   4.7874917428     ln 8 = 2.0794415417
# E[reward] = quality − mean rebuffer − 0.5·change:
SLOW = sim.ChunkContext(bandwidth_mbps=2.0, buffer_s=1.0, last_bitrate_mbps=1.5)
SLOW_EXPECTED = [1.5433294303, 1.8018002011, 0.2421237914, -3.2238026183, -10.5022290281]
# A fast link with a full buffer: download_s = 2·b / (20·f) ≤ 12/5 = 2.4 s < 10 s, never a stall,
# so E[reward] = ln(10b) − 0.5·|ln(b/12)| and 2160p (no switch either) is best at ln 120.
FAST = sim.ChunkContext(bandwidth_mbps=20.0, buffer_s=10.0, last_bitrate_mbps=12.0)


def test_one_chunk_by_hand() -> None:
    metrics = sim.chunk_metrics(SLOW, "720p", 0.8)
    assert metrics == pytest.approx(
        {"quality": math.log(30.0), "rebuffer_s": 2.75, "quality_change": math.log(2.0)}
    )
    # 3.4011973817 − 2.75 − 0.5 · 0.6931471806
    assert sim.reward_of(metrics) == pytest.approx(0.3046237914, abs=1e-9)
    with pytest.raises(sim.SimulatorError, match=r"unknown bitrate level '4k'; the ladder is \['360p'"):
        sim.chunk_metrics(SLOW, "4k", 1.0)


def test_expected_rewards_uniform_and_oracle_by_hand() -> None:
    np.testing.assert_allclose(sim.expected_rewards(SLOW), SLOW_EXPECTED, atol=1e-9)
    fast = [math.log(10 * b) - 0.5 * abs(math.log(b / 12.0)) for b in sim.LADDER.values()]
    np.testing.assert_allclose(sim.expected_rewards(FAST), fast, atol=1e-12)
    # The best level depends on the context: 480p on the slow link, 2160p on the fast one.
    assert list(sim.LADDER)[int(np.argmax(sim.expected_rewards(SLOW)))] == "480p"
    assert list(sim.LADDER)[int(np.argmax(sim.expected_rewards(FAST)))] == "2160p"
    contexts = [SLOW, FAST]
    assert sim.uniform_value(contexts) == pytest.approx(
        (np.mean(SLOW_EXPECTED) + np.mean(fast)) / 2, abs=1e-9
    )
    assert sim.oracle_value(contexts) == pytest.approx((1.8018002011 + math.log(120.0)) / 2, abs=1e-9)
    assert sim.policy_value(contexts, ["480p", "2160p"]) == pytest.approx(
        sim.oracle_value(contexts), abs=1e-12
    )
    assert sim.policy_value(contexts, ["360p", "360p"]) == pytest.approx(
        (SLOW_EXPECTED[0] + fast[0]) / 2, abs=1e-9
    )
    with pytest.raises(sim.SimulatorError, match="1 levels for 2 contexts"):
        sim.policy_value(contexts, ["360p"])


def test_exact_values_match_a_monte_carlo_estimate() -> None:
    rng = np.random.default_rng(3)
    contexts = sim.draw_contexts(rng, 500)
    names = list(sim.LADDER)
    best = [names[int(np.argmax(sim.expected_rewards(c)))] for c in contexts]
    uniform_draws, oracle_draws = [], []
    for _ in range(40):  # 40 draws per context: 20,000 per estimate
        for context, level in zip(contexts, best, strict=True):
            random_level = names[int(rng.integers(len(names)))]
            uniform_draws.append(sim.reward_of(sim.draw_outcome(rng, context, random_level)))
            oracle_draws.append(sim.reward_of(sim.draw_outcome(rng, context, level)))
    for draws, exact in (
        (uniform_draws, sim.uniform_value(contexts)),
        (oracle_draws, sim.oracle_value(contexts)),
    ):
        standard_error = np.std(draws) / math.sqrt(len(draws))
        assert abs(np.mean(draws) - exact) < 4.0 * standard_error, (np.mean(draws), exact, standard_error)
    assert sim.oracle_value(contexts) > sim.uniform_value(contexts) + 1.0


def test_contexts_are_seeded_and_in_range() -> None:
    first = sim.draw_contexts(np.random.default_rng(7), 2000)
    assert first == sim.draw_contexts(np.random.default_rng(7), 2000)
    bandwidth = np.array([c.bandwidth_mbps for c in first])
    buffer = np.array([c.buffer_s for c in first])
    assert bandwidth.min() >= 0.75 and bandwidth.max() <= 24.0
    assert buffer.min() >= 0.0 and buffer.max() <= 12.0
    assert {c.last_bitrate_mbps for c in first} == set(sim.LADDER.values())
    assert list(first[0].features()) == list(sim.FEATURE_NAMES)


def test_manifest_validates_and_matches_the_world() -> None:
    manifest = load_manifest(APP_DIR / "manifest.yaml")
    assert manifest.app == "video_bitrate"
    assert manifest.serving.port == 18081
    assert manifest.actions.kind == "discrete" and manifest.actions.names == list(sim.LADDER)
    assert manifest.feature_names == list(sim.FEATURE_NAMES)
    assert manifest.reward.metrics == sim.REWARD_WEIGHTS
    assert manifest.gate.problem == "one_step"
    assert manifest.refresh.daily_at_utc == "03:00" and manifest.refresh.every_new_rows == 1500
    settings = sim.read_settings(APP_DIR / "manifest.yaml")
    assert settings.app == "video_bitrate" and settings.rewards_topic == "video_bitrate.rewards"


def test_a_manifest_that_does_not_fit_the_world_is_refused(tmp_path: Path) -> None:
    text = (APP_DIR / "manifest.yaml").read_text().replace('"2160p"]', '"4k"]')
    (tmp_path / "manifest.yaml").write_text(text)
    with pytest.raises(sim.SimulatorError, match="must be the simulator's ladder"):
        sim.read_settings(tmp_path / "manifest.yaml")


def test_the_bodies_it_sends_are_what_streamrl_accepts() -> None:
    bodies = [sim.act_request(c, list(sim.LADDER)) for c in (SLOW, FAST)]
    for body in bodies:
        request = TypeAdapter(ActRequest).validate_python(body)
        assert request.mdp_id == body["request_id"] and request.sequence_number == 0
    assert len({b["request_id"] for b in bodies}) == 2 and len({b["entity_id"] for b in bodies}) == 2
    metrics = sim.chunk_metrics(SLOW, "720p", 0.8)
    event = RewardEvent.model_validate_json(
        json.dumps(sim.reward_event(bodies[0]["request_id"], metrics, sim.REWARD_WEIGHTS))
    )
    assert event.timestamp.utcoffset() is not None
    # The reward sent is the weighted sum the loop computes from the metrics.
    assert event.reward == pytest.approx(reward_value(event, sim.REWARD_WEIGHTS), abs=1e-12)


def test_the_simulator_and_what_it_imports_import_no_streamrl_stage() -> None:
    """The app runs no stage: only its own file and the HTTP/Kafka client (`apps.app_client`)."""
    seen, top_levels = reached("video_bitrate_simulator", APP_DIR / "simulator.py")
    assert not top_levels & STAGES, sorted(top_levels & STAGES)
    assert seen == {"video_bitrate_simulator", "apps", "apps.app_client"}


def _uniform_timelines(decisions: int, seed: int) -> pd.DataFrame:
    """What the stream job makes of uniformly served decisions: one-step, terminal rows."""
    rng = np.random.default_rng(seed)
    names = list(sim.LADDER)
    rows = []
    for i, context in enumerate(sim.draw_contexts(rng, decisions)):
        level = names[int(rng.integers(len(names)))]
        rows.append(
            {
                "mdp_id": f"chunk-{i}",
                "sequence_number": 0,
                "state_features": context.features(),
                "action": level,
                "action_probability": 1.0 / len(names),
                "reward": sim.reward_of(sim.draw_outcome(rng, context, level)),
                "possible_actions": names,
                "next_state_features": {},
                "possible_next_actions": [],
                "not_terminal": False,
            }
        )
    return pd.DataFrame(rows)


def test_the_manifest_trainer_learns_most_of_the_gap_from_uniform_logs(tmp_path: Path) -> None:
    manifest = load_manifest(APP_DIR / "manifest.yaml")
    timelines = _uniform_timelines(1500, seed=0)
    spec = fit_normalization(frame_from_feature_maps(list(timelines["state_features"])))
    registry = ModelRegistry(tmp_path / "registry")
    metadata = train_and_register(
        timelines, spec, list(sim.LADDER), manifest.trainer, registry, tmp_path / "logs", GreedyExploration()
    )
    policy = load_registered_policy(registry, metadata.version)
    contexts = sim.draw_contexts(np.random.default_rng(99), 2000)
    q = policy.q_values(
        policy.features([c.features() for c in contexts]),
        policy.possible_mask([list(sim.LADDER)] * len(contexts)),
    )
    chosen = [metadata.actions[i] for i in np.argmax(q, axis=1)]
    uniform, oracle = sim.uniform_value(contexts), sim.oracle_value(contexts)
    gap_closed = (sim.policy_value(contexts, chosen) - uniform) / (oracle - uniform)
    assert gap_closed > 0.7, gap_closed
