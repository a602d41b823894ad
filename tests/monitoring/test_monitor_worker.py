"""The faust worker on a real broker: decisions + rewards for two versions → exact MetricsWindow records."""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from contracts import ActionKind, DecisionEvent, RewardEvent, Topics
from monitoring import (
    AlertKind,
    ContinuousWindow,
    MetricsWindow,
    MonitoringConfig,
    ParametricWindow,
    latest_revisions,
    tail_metrics,
)

ACTIONS = ["a", "b", "c"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, show: Callable[[], Any] = lambda: None
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; state: {show()!r}")


class Worker:
    def __init__(self, config: MonitoringConfig, tmp_path: Path) -> None:
        path = tmp_path / "monitor.json"
        path.write_text(config.model_dump_json(), encoding="utf-8")
        self.config = config
        self.log = (tmp_path / "worker.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitoring", "--config", str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stats(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.config.web_port}/stats/", timeout=1.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def stat(self, name: str) -> Any:
        return (self.stats() or {}).get(name)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture
def worker(local_stack: Any, topics: Topics, tmp_path: Path) -> Iterator[Worker]:
    config = MonitoringConfig(
        app_id=f"mon-{uuid.uuid4().hex[:8]}",
        bootstrap_servers=local_stack.bootstrap_servers,
        topics=topics,
        window_s=60,
        allowed_lateness_s=0,
        emit_interval_s=0.5,
        reward_hold_s=5,
        min_log_density=-3.0,
        web_port=_free_port(),
        data_dir=tmp_path / "faust",
    )
    started = Worker(config, tmp_path)
    try:
        _wait_for(started.stats, 60, f"monitor worker web page (log: {tmp_path / 'worker.log'})")
        yield started
    finally:
        if started.proc.poll() is None:
            started.stop()


class Logger:
    """Produces events the way apps do (decisions keyed by mdp_id, rewards by request_id)."""

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self.topics = topics
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")

    def decision(self, request_id: str, version: str, at: datetime, action: str, propensity: float) -> None:
        event = DecisionEvent(
            request_id=request_id,
            entity_id="user-1",
            mdp_id=f"mdp-{request_id}",
            sequence_number=0,
            timestamp=at,
            context_features={"x": 1.0},
            possible_actions=ACTIONS,
            action=action,
            action_probability=propensity,
            model_version=version,
        )
        self.send(event)

    def send(self, event: DecisionEvent) -> None:
        self.raw(self.topics.decisions, event.mdp_id, event.to_json_bytes())

    def reward(self, request_id: str, at: datetime, reward: float) -> None:
        event = RewardEvent(request_id=request_id, timestamp=at, reward=reward)
        self.raw(self.topics.rewards, request_id, event.to_json_bytes())

    def raw(self, topic: str, key: str, value: bytes) -> None:
        self.producer.send(topic, key=key.encode(), value=value)
        self.producer.flush(timeout=10)


def _latest(bootstrap_servers: str, topic: str) -> dict[tuple[str, datetime], MetricsWindow]:
    return {
        (w.model_version, w.window_start): w for w in latest_revisions(tail_metrics(bootstrap_servers, topic))
    }


def test_two_versions_exact_windows_alerts_and_reward_attribution(
    worker: Worker, local_stack: Any, topics: Topics
) -> None:
    servers = local_stack.bootstrap_servers
    now = datetime.now(UTC)
    w0 = datetime.fromtimestamp(math.floor(now.timestamp() / 60) * 60, UTC) - timedelta(minutes=10)
    w1 = w0 + timedelta(minutes=1)
    log = Logger(servers, topics)

    # Window 0: v1 has a tiny propensity (alert) and mean reward 1.0; v2 mean reward 1.0.
    for i, (action, p) in enumerate([("a", 0.5), ("a", 0.5), ("b", 0.25), ("c", 0.005)]):
        log.decision(f"v1-0-{i}", "v1", w0 + timedelta(seconds=i), action, p)
    for i, r in enumerate([1.0, 0.0, 2.0]):
        log.reward(f"v1-0-{i}", w0 + timedelta(seconds=10 + i), r)
    for i in range(3):
        log.decision(f"v2-0-{i}", "v2", w0 + timedelta(seconds=20 + i), "b", 0.9)
        log.reward(f"v2-0-{i}", w0 + timedelta(seconds=30 + i), 1.0)
    # Invalid decisions are counted and skipped.
    log.raw(topics.decisions, "bad", b"not json")
    log.raw(topics.decisions, "bad", b'{"schema_version": 1, "request_id": "x"}')
    # A reward whose decision never comes is held, then counted unattributed.
    log.reward("ghost", w0 + timedelta(seconds=40), 100.0)

    expected_w0 = {
        ("v1", w0): dict(decisions=4, action_counts={"a": 2, "b": 1, "c": 1}, rewards=3, mean_reward=1.0),
        ("v2", w0): dict(decisions=3, action_counts={"b": 3}, rewards=3, mean_reward=1.0),
    }

    def window_matches(expected: dict[tuple[str, datetime], dict[str, Any]]) -> Any:
        latest = _latest(servers, topics.metrics)
        ok = all(
            key in latest and all(getattr(latest[key], f) == v for f, v in fields.items())
            for key, fields in expected.items()
        )
        return latest if ok else None

    latest = _wait_for(lambda: window_matches(expected_w0), 30, "window 0 metrics")
    assert [a.split(":")[0] for a in latest[("v1", w0)].alerts] == [AlertKind.LOW_PROPENSITY]
    assert latest[("v1", w0)].min_propensity == 0.005 and latest[("v1", w0)].reward_sum == 3.0
    assert latest[("v2", w0)].alerts == [] and latest[("v2", w0)].min_propensity == 0.9

    # Rewards racing ahead of their decisions above were held and then attributed (counts are exact);
    # the ghost reward is counted unattributed once the hold expires.
    _wait_for(
        lambda: worker.stat("unattributed_rewards") == 1, 20, "the ghost reward to expire", worker.stats
    )
    assert worker.stat("pending_requests") == 0

    # Window 1, produced after window 0 is complete so the reward-drop comparison is deterministic.
    # A reward that arrives before its decision is held, then attributed to the decision's version.
    log.reward("v2-early", w1 + timedelta(seconds=5), 5.0)
    _wait_for(lambda: worker.stat("pending_requests") == 1, 5, "the early reward to be held", worker.stats)
    log.decision("v2-early", "v2", w1 + timedelta(seconds=1), "a", 0.5)
    for i in range(2):
        log.decision(f"v1-1-{i}", "v1", w1 + timedelta(seconds=i), "a", 0.5)
        log.reward(f"v1-1-{i}", w1 + timedelta(seconds=10), 0.2)

    expected_w1 = {
        ("v1", w1): dict(decisions=2, action_counts={"a": 2}, rewards=2, mean_reward=0.2),
        ("v2", w1): dict(decisions=1, action_counts={"a": 1}, rewards=1, mean_reward=5.0),
    }
    latest = _wait_for(lambda: window_matches(expected_w1), 30, "window 1 metrics")
    assert [a.split(":")[0] for a in latest[("v1", w1)].alerts] == [AlertKind.REWARD_DROP]
    assert latest[("v2", w1)].alerts == []  # v2's reward went up
    assert set(latest) == {("v1", w0), ("v2", w0), ("v1", w1), ("v2", w1)}
    assert all(w.window_end - w.window_start == timedelta(seconds=60) for w in latest.values())

    stats = worker.stats()
    assert stats is not None and stats["unattributed_rewards"] == 1
    assert stats["invalid_decisions"] == 2
    assert stats["decisions"] == 10 and stats["rewards"] == 10
    assert stats["pending_requests"] == 0 and stats["late_events"] == 0
    assert worker.stop() == 0


def test_parametric_and_continuous_decisions_give_their_kind_summaries(
    worker: Worker, local_stack: Any, topics: Topics
) -> None:
    servers = local_stack.bootstrap_servers
    now = datetime.now(UTC)
    w0 = datetime.fromtimestamp(math.floor(now.timestamp() / 60) * 60, UTC) - timedelta(minutes=10)
    log = Logger(servers, topics)

    def decision(request_id: str, version: str, kind: ActionKind, **choice: Any) -> None:
        log.send(
            DecisionEvent(
                action_kind=kind,
                request_id=request_id,
                entity_id="user-1",
                mdp_id=f"mdp-{request_id}",
                sequence_number=0,
                timestamp=w0 + timedelta(seconds=1),
                context_features={"x": 1.0},
                model_version=version,
                **choice,
            )
        )

    for request_id, candidates, chosen, p in [("p-0", 4, "i2", 0.4), ("p-1", 2, "i1", 0.5)]:
        items = [f"i{i}" for i in range(candidates)]
        features = [{"price": float(i)} for i in range(candidates)]
        decision(
            request_id,
            "pdqn",
            ActionKind.PARAMETRIC,
            possible_actions=items,
            candidate_features=features,
            action=chosen,
            action_probability=p,
        )
    for request_id, torque, log_density in [("c-0", 0.5, -0.25), ("c-1", -1.5, -3.5)]:
        decision(
            request_id,
            "sac",
            ActionKind.CONTINUOUS,
            possible_actions=["torque"],
            action_vector=[torque],
            action_log_density=log_density,
        )
    log.reward("c-0", w0 + timedelta(seconds=30), 2.0)

    # pdqn: 4 and 2 candidates, smallest propensity 0.4. sac: torque 0.5 and -1.5 (mean -0.5,
    # population std 1), log densities -0.25 and -3.5 (mean -1.875, below the -3 alert threshold).
    expected = {
        ("pdqn", w0): dict(
            decisions=2,
            action_counts={},
            min_propensity=0.4,
            parametric=ParametricWindow(decisions=2, mean_candidates=3.0),
            continuous=None,
            rewards=0,
        ),
        ("sac", w0): dict(
            decisions=2,
            action_counts={},
            min_propensity=None,
            parametric=None,
            continuous=ContinuousWindow(
                decisions=2,
                action_mean={"torque": -0.5},
                action_std={"torque": 1.0},
                min_log_density=-3.5,
                mean_log_density=-1.875,
            ),
            rewards=1,
            mean_reward=2.0,
        ),
    }

    def windows_match() -> Any:
        latest = _latest(servers, topics.metrics)
        ok = all(
            key in latest and all(getattr(latest[key], f) == v for f, v in fields.items())
            for key, fields in expected.items()
        )
        return latest if ok else None

    latest = _wait_for(windows_match, 30, "parametric and continuous windows", worker.stats)
    assert latest[("pdqn", w0)].alerts == []
    assert [a.split(":")[0] for a in latest[("sac", w0)].alerts] == [AlertKind.LOW_DENSITY]
    stats = worker.stats()
    assert stats is not None and stats["decisions"] == 4 and stats["invalid_decisions"] == 0
