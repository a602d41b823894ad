"""The HTTP apps against real serving (uniform day-0 fallback) and a real broker.

Each check reads back what serving logged and what the app logged from Kafka and replays it
independently: Gym episodes re-run with the logged actions reproduce the app's returns, and the
recommendation clicks logged are the simulator's draws for the items serving chose.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from apps.gym_http import CARTPOLE, PENDULUM, run_episodes, run_recsys
from apps.recsys import RecsysSim, RecsysSimConfig, item_id
from contracts import DecisionEvent, RewardEvent, Topics
from serving import ServingConfig, create_app
from serving.config import ContinuousActionConfig, UniformFallbackConfig
from stream import EventLogger
from tests.serving._kafka import read_decisions
from trainer.gym_discrete import CARTPOLE_FEATURES

DAY0 = "day0-uniform"


@pytest.fixture
def served(local_stack, topics: Topics, tmp_path: Path) -> Iterator[tuple[TestClient, EventLogger]]:
    """Serving with no model and the uniform fallback (torque in [−2, 2]), and the app's logger."""
    config = ServingConfig(
        registry_root=tmp_path / "registry",
        bootstrap_servers=local_stack.bootstrap_servers,
        topics=topics,
        seed=5,
        fallback=UniformFallbackConfig(model_version=DAY0),
        continuous_actions=[ContinuousActionConfig(name="torque", low=-2.0, high=2.0)],
    )
    with (
        TestClient(create_app(config)) as client,
        EventLogger(local_stack.bootstrap_servers, topics) as logger,
    ):
        yield client, logger


def _read_rewards(bootstrap_servers: str, topic: str, expected: set[str]) -> dict[str, RewardEvent]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: dict[str, RewardEvent] = {}
        deadline = time.monotonic() + 30.0
        while not expected <= found.keys() and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = RewardEvent.model_validate_json(record.value)
                    found[event.request_id] = event
        return found
    finally:
        consumer.close()


def _logged(local_stack, topics: Topics, request_ids: list[str]) -> tuple[list[DecisionEvent], dict]:
    decisions = read_decisions(local_stack.bootstrap_servers, topics.decisions, set(request_ids))
    rewards = _read_rewards(local_stack.bootstrap_servers, topics.rewards, set(request_ids))
    assert set(request_ids) <= decisions.keys(), "serving logged every decision"
    assert set(request_ids) <= rewards.keys(), "the app logged every reward"
    return [decisions[r] for r in request_ids], {r: rewards[r].reward for r in request_ids}


def _replay(env_id: str, seed: int, actions: list) -> tuple[float, int]:
    """Return and length of one episode re-run from its seed with the logged actions."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    total, steps = 0.0, 0
    for action in actions:
        _, reward, terminated, truncated, _ = env.step(action)
        total, steps = total + float(reward), steps + 1
        if terminated or truncated:
            break
    env.close()
    return total, steps


def _episodes(decisions: list[DecisionEvent], prefix: str) -> dict[int, list[DecisionEvent]]:
    by_episode: dict[int, list[DecisionEvent]] = {}
    for d in decisions:
        by_episode.setdefault(int(d.mdp_id.removeprefix(prefix + "-")), []).append(d)
    return {e: sorted(steps, key=lambda d: d.sequence_number) for e, steps in by_episode.items()}


def test_cartpole_episodes_replay_from_the_logged_decisions(served, local_stack, topics: Topics) -> None:
    client, logger = served
    outcome = run_episodes(CARTPOLE, client, logger, seed=100, mdp_prefix="cp", episodes=5, parallel=2)
    assert len(outcome.episode_returns) == 5
    assert outcome.steps == sum(outcome.episode_returns)  # CartPole pays 1 per step
    assert outcome.model_versions == {DAY0: outcome.steps}
    decisions, rewards = _logged(local_stack, topics, outcome.request_ids)
    assert all(d.action_probability == 0.5 and d.possible_actions == ["left", "right"] for d in decisions)
    assert list(decisions[0].context_features) == CARTPOLE_FEATURES  # the trainer's names, in order
    assert set(rewards.values()) == {1.0}
    episodes = _episodes(decisions, "cp")
    assert sorted(episodes) == [0, 1, 2, 3, 4]
    for e, steps in episodes.items():
        assert [d.sequence_number for d in steps] == list(range(len(steps)))
        actions = [["left", "right"].index(d.action) for d in steps]
        assert _replay("CartPole-v1", 100 + e, actions) == (outcome.episode_returns[e], len(steps))


def test_pendulum_applies_the_served_vector(served, local_stack, topics: Topics) -> None:
    client, logger = served
    outcome = run_episodes(PENDULUM, client, logger, seed=7, mdp_prefix="pd", episodes=2, parallel=2)
    assert outcome.steps == 400  # Pendulum-v1 truncates at 200 steps
    decisions, rewards = _logged(local_stack, topics, outcome.request_ids)
    vectors = np.array([d.action_vector for d in decisions])
    assert vectors.shape == (400, 1) and np.all(np.abs(vectors) <= 2.0)
    assert vectors.std() > 0.8  # uniform on [−2, 2] has std 4/√12 ≈ 1.15
    assert all(math.isclose(d.action_log_density, -math.log(4.0), abs_tol=1e-6) for d in decisions)
    for e, steps in _episodes(decisions, "pd").items():
        replayed, length = _replay(
            "Pendulum-v1", 7 + e, [np.array(d.action_vector, np.float32) for d in steps]
        )
        assert length == 200
        assert replayed == pytest.approx(outcome.episode_returns[e], abs=1e-3)
        assert replayed == pytest.approx(sum(rewards[d.request_id] for d in steps), abs=1e-3)


def test_recsys_requests_log_the_chosen_item_and_its_click(served, local_stack, topics: Topics) -> None:
    client, logger = served
    sim = RecsysSim(RecsysSimConfig())
    outcome = run_recsys(sim, client, logger, start=40, count=300, mdp_prefix="rs", batch_size=128)
    assert [r.index for r in outcome.requests] == list(range(40, 340))
    decisions, rewards = _logged(local_stack, topics, outcome.request_ids)
    for request, item, decision in zip(outcome.requests, outcome.chosen, decisions, strict=True):
        offered = [item_id(int(c)) for c in request.candidates]
        assert decision.possible_actions == offered
        assert decision.action == item_id(item)
        assert decision.action_probability == pytest.approx(1.0 / len(offered))
        assert decision.candidate_features == [sim.candidate(int(c))["features"] for c in request.candidates]
        assert rewards[decision.request_id] == sim.draw_reward(request, item)
    # uniform choices: the realized value is the uniform value within sampling noise
    values = np.array(
        [
            sim.expected_rewards(r)[list(r.candidates).index(c)]
            for r, c in zip(outcome.requests, outcome.chosen, strict=True)
        ]
    )
    assert abs(values.mean() - sim.uniform_value(outcome.requests)) < 4 * values.std() / np.sqrt(len(values))
