"""Redis killed while serving (real redis-server processes): decisions go on from request features
with one failed read per retry period instead of a timeout each, `/healthz` says degraded and why,
a metric counts the fallbacks, and serving recovers by itself when Redis returns."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from features.store import FeatureStoreConfig, RedisReaderConfig
from serving import create_app
from serving._breaker import FeatureBreaker
from tests.serving.conftest import ACTIONS, FEATURES, register_model

pytestmark = pytest.mark.faults
BODY = {"entity_id": "user-1", "context_features": {"f_age": 0.3}, "possible_actions": ACTIONS}


def test_the_breaker_opens_on_a_failure_probes_once_per_period_and_closes_on_success() -> None:
    now = [100.0]
    breaker = FeatureBreaker(open_s=5.0, clock=lambda: now[0])
    assert breaker.allow() and breaker.degraded_reason() is None
    breaker.failed("ConnectionError: refused")
    assert not breaker.allow()
    assert breaker.degraded_reason().startswith("online feature store unavailable (ConnectionError: refused)")
    now[0] = 104.9
    assert not breaker.allow()
    now[0] = 105.0  # the period is over: one probe, and only one while it runs
    assert breaker.allow() and not breaker.allow()
    breaker.failed("still down")  # the probe failed: another full period
    now[0] = 109.9
    assert not breaker.allow()
    now[0] = 110.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.allow() and breaker.allow() and breaker.degraded_reason() is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis(port: int, directory: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def _counter(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_serving_keeps_deciding_while_redis_is_down_and_recovers_when_it_returns(
    config, registry, tmp_path: Path
) -> None:
    version = register_model(registry, seed=61)
    registry.deploy(version, reason="test")
    port = _free_port()
    redis = _redis(port, tmp_path)
    store = FeatureStoreConfig(
        repo_dir=tmp_path / "repo",
        offline_dir=tmp_path / "offline",
        redis_connection=f"127.0.0.1:{port}",
        feature_names=FEATURES,
        online_reader=RedisReaderConfig(socket_timeout_s=1.0),
    )
    served = config.model_copy(update={"feature_store": store, "feature_retry_s": 1.0})
    try:
        with TestClient(create_app(served)) as client:
            for _ in range(5):  # Redis up: unknown entities read as missing, no failure
                assert client.post("/v1/act", json=BODY).status_code == 200
            metrics = client.get("/metrics").text
            assert _counter(metrics, "streamrl_serving_feature_lookup_failures_total") == 0
            assert client.get("/healthz").json()["status"] == "ok"

            redis.kill()
            redis.wait(timeout=10)
            statuses = [client.post("/v1/act", json=BODY).status_code for _ in range(40)]
            assert statuses == [200] * 40  # decided on request features
            metrics = client.get("/metrics").text
            # one read failed and opened the breaker; the other 39 (well within its 1 s) skipped the store
            failures = _counter(metrics, "streamrl_serving_feature_lookup_failures_total")
            assert 1 <= failures <= 5, failures  # without the breaker: 40, one failed read per decision
            assert _counter(metrics, "streamrl_serving_feature_fallbacks_total") == 40
            health = client.get("/healthz").json()
            assert health["status"] == "degraded"
            assert any(r.startswith("online feature store unavailable") for r in health["degraded_reasons"])

            redis = _redis(port, tmp_path)  # back on the same port
            deadline = time.monotonic() + 30
            while client.get("/healthz").json()["status"] != "ok":
                assert time.monotonic() < deadline, "serving did not go back to the store"
                client.post("/v1/act", json=BODY)  # a call after the period probes the store
                time.sleep(0.2)
            before = _counter(client.get("/metrics").text, "streamrl_serving_feature_fallbacks_total")
            for _ in range(5):
                assert client.post("/v1/act", json=BODY).status_code == 200
            after = client.get("/metrics").text
            assert (
                _counter(after, "streamrl_serving_feature_fallbacks_total") == before
            )  # reading the store again
    finally:
        redis.kill()
        redis.wait(timeout=10)
