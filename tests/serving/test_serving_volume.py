"""Serving at volume: a full decision queue refuses with 503 and drops nothing, `/healthz` answers
while inference is saturated, and every worker of a multi-worker server hot-swaps under load.

Real parts only: a Tansu broker and Redis (a stack of the test's own where the broker is paused),
onnxruntime, uvicorn servers on free ports (in a thread, or `serving.run_server` in a process).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from contracts import Topics
from infra.stack import LocalStack
from serving import ServingConfig, create_app
from stream.topics import ensure_topics
from tests.helpers import free_port, serve_in_thread, stack_config_on_free_ports, start_serving
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS, register_model

BODY = {"entity_id": "u", "context_features": {"f_age": 0.5}, "possible_actions": ACTIONS}


def _wait_until(what: str, check, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.05)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.fixture
def own_stack(tmp_path_factory: pytest.TempPathFactory):
    """A broker and Redis of this test's own: the test pauses the broker."""
    stack = LocalStack(stack_config_on_free_ports(tmp_path_factory.mktemp("own_stack")))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def test_full_decision_queue_answers_503_with_retry_after_and_drops_nothing(own_stack, registry, tmp_path):
    topics = Topics(
        decisions="decisions-full", rewards="rewards-full", dead_letters="dl-full", metrics="metrics-full"
    )
    ensure_topics(own_stack.bootstrap_servers, topics, partitions=1)
    version = register_model(registry, seed=30)
    registry.deploy(version, reason="test")
    config = ServingConfig(
        registry_root=registry.root,
        bootstrap_servers=own_stack.bootstrap_servers,
        topics=topics,
        poll_interval_s=0.1,
        seed=3,
        decision_queue_size=4,
        decision_retry_after_s=2,
        log_flush_timeout_s=120.0,  # a paused broker is slow, not failing: nothing is counted failed
    )
    broker_pid = next(s.pid for s in own_stack.status() if s.name == "broker")
    accepted: list[str] = []
    refused: list[str] = []
    with serve_in_thread(create_app(config)) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_until("the model serving", lambda: client.get("/healthz").json()["model_version"] == version)
        first = client.post("/v1/act", json={**BODY, "request_id": "before-pause"})
        assert first.status_code == 200
        accepted.append("before-pause")
        _wait_until(
            "the first decision logged",
            lambda: _metric(client.get("/metrics").text, "streamrl_serving_decisions_logged_total") == 1,
        )
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            # The log thread hands what is queued to the broker client and waits on its flush; the
            # queue (4) then fills, and the next decisions are refused instead of waited for.
            for i in range(200):
                response = client.post("/v1/act", json={**BODY, "request_id": f"r-{i}"})
                if response.status_code == 200:
                    accepted.append(f"r-{i}")
                    continue
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "2"
                assert response.json()["error"] == "DecisionQueueFullError"
                assert response.json()["request_id"] == f"r-{i}"
                refused.append(f"r-{i}")
                break
            assert refused, "the queue never filled"
            batch = client.post(
                "/v1/act/batch", json={"requests": [{**BODY, "request_id": f"b-{j}"} for j in range(2)]}
            )
            assert batch.status_code == 503 and batch.headers["retry-after"] == "2"
            refused += ["b-0", "b-1"]
            logged_decision = client.post(
                "/v1/decisions",
                json={
                    **BODY,
                    "request_id": "own-0",
                    "action": "push",
                    "action_probability": 0.5,
                    "policy": "p",
                },
            )
            assert logged_decision.status_code == 503
            refused.append("own-0")
            health = client.get("/healthz")  # the loop answers while the log is stuck
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert any("backlog 4/4" in r for r in health.json()["degraded_reasons"]), health.json()
            metrics = client.get("/metrics").text
            assert _metric(metrics, "streamrl_serving_decision_queue_depth") == 4
            assert _metric(metrics, "streamrl_serving_decision_queue_capacity") == 4
            assert _metric(metrics, "streamrl_serving_decisions_refused_total") == 4
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        _wait_until(
            "every accepted decision logged",
            lambda: (
                _metric(client.get("/metrics").text, "streamrl_serving_decisions_logged_total")
                == len(accepted)
            ),
            timeout_s=120,
        )
        metrics = client.get("/metrics").text
        assert _metric(metrics, "streamrl_serving_decisions_failed_total") == 0
        assert _metric(metrics, "streamrl_serving_decision_queue_depth") == 0
        # Room again: answered and logged as usual.
        assert client.post("/v1/act", json={**BODY, "request_id": "after"}).status_code == 200
        accepted.append("after")
    found = read_decisions(own_stack.bootstrap_servers, topics.decisions, set(accepted))
    assert set(found) == set(accepted), "every answered decision is logged, and no refused one"


def test_healthz_answers_while_inference_is_saturated(config, registry):
    version = register_model(registry, seed=31)
    registry.deploy(version, reason="test")
    app = create_app(config.model_copy(update={"inference_threads": 1}))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_until("the model serving", lambda: client.get("/healthz").json()["model_version"] == version)
        release = threading.Event()
        blocker = app.state.runtime.inference.submit(release.wait)  # the one inference thread is busy
        try:
            with ThreadPoolExecutor(4) as pool:
                waiting = [pool.submit(httpx.post, f"{url}/v1/act", json=BODY, timeout=30) for _ in range(4)]
                for _ in range(5):
                    health = client.get("/healthz")
                    assert health.status_code == 200 and health.json()["model_version"] == version
                    assert client.get("/metrics").status_code == 200
                assert not any(f.done() for f in waiting), (
                    "decisions cannot finish while inference is blocked"
                )
                release.set()
                assert [f.result().status_code for f in waiting] == [200] * 4
        finally:
            release.set()
            blocker.result(timeout=30)


def _worker_versions(url: str) -> dict[str, str]:
    """Served model version per live worker pid, from one `/metrics` scrape (workers publish theirs)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(
        r'^streamrl_serving_worker_model_version\{pid="(\d+)",version="([^"]+)"\} 1', text, re.MULTILINE
    )
    return dict(found)


def _requests_total(url: str, status: int) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(
        rf'^streamrl_serving_requests_total\{{endpoint="/v1/act",status="{status}"\}} (\S+)',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_every_worker_hot_swaps_under_load_without_a_failed_request(config, registry, tmp_path: Path):
    v1, v2 = register_model(registry, seed=32), register_model(registry, seed=33)
    registry.deploy(v1, reason="first")
    port = free_port()
    served = config.model_copy(update={"workers": 2, "port": port, "poll_interval_s": 0.05})
    process = start_serving(served, tmp_path / "serving.log")
    url = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def fire() -> None:
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as load:
            for _ in range(5000):  # bounded even if the test body fails
                if stop.is_set():
                    return
                response = load.post("/v1/act", json=BODY)  # a new connection each: every worker gets some
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])

    try:

        def both_on(version: str) -> bool:
            assert process.poll() is None, (tmp_path / "serving.log").read_text()
            try:
                workers = _worker_versions(url)
            except httpx.TransportError:
                return False
            return len(workers) == 2 and set(workers.values()) == {version}

        _wait_until("both workers serving v1", lambda: both_on(v1), timeout_s=120)
        loaders = [threading.Thread(target=fire) for _ in range(3)]
        for loader in loaders:
            loader.start()
        try:
            _wait_until("load under way", lambda: len(statuses) >= 50)
            registry.deploy(v2, reason="swap under load")
            _wait_until("both workers serving v2", lambda: both_on(v2), timeout_s=60)
            seen = len(statuses)
            _wait_until("load after the swap", lambda: len(statuses) >= seen + 50)
        finally:
            stop.set()
            for loader in loaders:
                loader.join(timeout=60)
        # every worker publishes its counts each second: wait until scrapes over fresh connections
        # (answered by either worker) all hold every request, then read them once more
        _wait_until(
            "both workers' counts in /metrics",
            lambda: min(_requests_total(url, 200) for _ in range(10)) >= len(statuses),
        )
        answered_totals = {_requests_total(url, 200) for _ in range(10)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert statuses and set(statuses) == {200}, f"failed requests: {[s for s in statuses if s != 200][:10]}"
    assert answered_totals == {len(statuses)}, "/metrics sums both workers' requests, whichever answers"
    assert set(versions) == {v1, v2} and versions[-1] == v2
    assert process.returncode in (0, -signal.SIGTERM), (tmp_path / "serving.log").read_text()


def test_workers_are_a_serving_config_field_of_the_environment(tmp_path: Path):
    """`serving.workers` in an environment file reaches `ServingConfig` (what `streamrl serve`/`up` run)."""
    from infra.config import load_config
    from infra.environment import Environment

    path = tmp_path / "env.yaml"
    path.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "serving": {"workers": 3}}))
    config = Environment.from_config(load_config(path)).serving_config()
    assert config.workers == 3 and config.inference_threads == 4
