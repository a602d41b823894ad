"""Hot swap, rollback and a corrupt deploy, against a real uvicorn server on a free port."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import ServingConfig, create_app
from tests.helpers import serve_in_thread
from tests.serving.conftest import ACTIONS, register_model
from trainer.registry import DeploymentEvent, DeploymentKind, DeploymentState

BODY = {"entity_id": "u", "context_features": {"f_age": 0.5}, "possible_actions": ACTIONS}


@pytest.fixture
def config(config: ServingConfig) -> ServingConfig:
    """The shared serving config, polling the deploy pointer faster: swaps are what is tested here."""
    return config.model_copy(update={"poll_interval_s": 0.05})


def _wait_for(client: httpx.Client | TestClient, version: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/healthz").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"model {version} never became the served one"
        time.sleep(0.02)


def test_deploy_and_rollback_under_load_fail_no_request(config, registry):
    v1, v2 = register_model(registry, seed=10), register_model(registry, seed=11)
    registry.deploy(v1, reason="first")
    results: list[tuple[int, str | None, float]] = []
    stop = threading.Event()
    with serve_in_thread(create_app(config)) as url, httpx.Client(base_url=url, timeout=10) as client:
        _wait_for(client, v1)

        def fire() -> None:
            with httpx.Client(base_url=url, timeout=10) as load:
                for _ in range(3000):  # bounded even if the test body fails
                    if stop.is_set():
                        return
                    started = time.perf_counter()
                    response = load.post("/v1/act", json=BODY)
                    elapsed = time.perf_counter() - started
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    results.append((response.status_code, version, elapsed))

        loader = threading.Thread(target=fire)
        loader.start()
        try:
            while len(results) < 100:
                time.sleep(0.01)
            registry.deploy(v2, reason="better")
            _wait_for(client, v2)
            seen = len(results)
            while len(results) < seen + 100:
                time.sleep(0.01)
            assert registry.rollback(reason="worse online") == v1
            _wait_for(client, v1)
            seen = len(results)
            while len(results) < seen + 100:
                time.sleep(0.01)
        finally:
            stop.set()
            loader.join(timeout=30)
        metrics = client.get("/metrics").text
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == len(results), f"failed requests: {[s for s in statuses if s != 200]}"
    versions = [v for _, v, _ in results]
    runs = [versions[0]] + [b for a, b in zip(versions, versions[1:], strict=False) if a != b]
    assert runs == [v1, v2, v1], f"served versions changed as {runs}"
    assert "streamrl_serving_model_swaps_total 3" in metrics
    latency_ms = np.array([elapsed for _, _, elapsed in results]) * 1000
    print(
        f"\n/v1/act under swaps, n={len(results)}: p50 {np.percentile(latency_ms, 50):.2f} ms, "
        f"p99 {np.percentile(latency_ms, 99):.2f} ms"
    )


def test_corrupt_deploy_keeps_previous_model_and_is_reported(config, registry):
    good, bad = register_model(registry, seed=20), register_model(registry, seed=21)
    registry.deploy(good, reason="first")
    model_file = registry.models_dir / bad / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:100] + b"garbage")
    # registry.deploy refuses a corrupt model, so move the pointer by hand, as a bad copy or a
    # race with a half-written file would.
    state = registry.deployment_state()
    event = DeploymentEvent(
        kind=DeploymentKind.DEPLOY, version=bad, previous=good, at=datetime.now(UTC), reason="x"
    )
    with TestClient(create_app(config)) as client:
        _wait_for(client, good)
        registry.pointer_path.write_text(
            DeploymentState(current=bad, history=[*state.history, event]).model_dump_json()
        )
        deadline = time.monotonic() + 10
        while "streamrl_serving_model_swap_failures_total 1" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the failed swap was never reported in /metrics"
            time.sleep(0.02)
        time.sleep(0.3)  # several more polls: the same bad version is counted once, not per poll
        metrics = client.get("/metrics").text
        assert "streamrl_serving_model_swap_failures_total 1" in metrics
        assert f'streamrl_serving_model_version{{version="{good}"}} 1' in metrics
        response = client.post("/v1/act", json=BODY)
        assert response.status_code == 200 and response.json()["model_version"] == good
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and health["model_version"] == good
        assert any(bad in reason and "sha256" in reason for reason in health["degraded_reasons"]), health
        fixed = register_model(registry, seed=22)
        registry.deploy(fixed, reason="fixed")
        _wait_for(client, fixed)
        assert client.get("/healthz").json() == {
            "schema_version": 1,
            "status": "ok",
            "model_version": fixed,
            "canary": None,
            "degraded_reasons": [],
        }
        assert client.post("/v1/act", json=BODY).json()["model_version"] == fixed
