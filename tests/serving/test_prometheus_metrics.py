"""`/metrics` parsed with prometheus_client's own parser: exact counts, one registry per app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from serving import create_app
from serving._metrics import LATENCY_BUCKETS_S, ServingMetrics
from tests.serving.conftest import register_model

BODY = {"entity_id": "user-1", "context_features": {"f_age": 0.3}, "possible_actions": ["email", "push"]}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample in the exposition, keyed by sample name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_exactly_what_each_app_served(config, registry):
    version = register_model(registry, seed=1)
    registry.deploy(version, reason="test")
    with TestClient(create_app(config)) as first, TestClient(create_app(config)) as second:
        for _ in range(5):
            assert first.post("/v1/act", json=BODY).status_code == 200
        for _ in range(2):
            assert first.get("/healthz").status_code == 200
        assert first.post("/v1/act", json={"entity_id": "user-1"}).status_code == 422
        for _ in range(3):
            assert second.post("/v1/act", json=BODY).status_code == 200

        response = first.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        seen = _samples(response.text)
        assert _value(seen, "streamrl_serving_requests_total", endpoint="/v1/act", status="200") == 5
        assert _value(seen, "streamrl_serving_requests_total", endpoint="/v1/act", status="422") == 1
        assert _value(seen, "streamrl_serving_requests_total", endpoint="/healthz", status="200") == 2
        # A scrape is counted once it has been answered, so the first one is not in its own text.
        assert _value(seen, "streamrl_serving_requests_total", endpoint="/metrics", status="200") is None
        assert _value(seen, "streamrl_serving_request_latency_seconds_count", endpoint="/v1/act") == 6
        assert (
            _value(seen, "streamrl_serving_request_latency_seconds_bucket", endpoint="/v1/act", le="+Inf")
            == 6
        )
        buckets = [
            _value(seen, "streamrl_serving_request_latency_seconds_bucket", endpoint="/v1/act", le=str(bound))
            for bound in LATENCY_BUCKETS_S
        ]
        assert buckets == sorted(buckets) and buckets[-1] <= 6
        assert _value(seen, "streamrl_serving_model_swaps_total") == 1
        assert _value(seen, "streamrl_serving_model_swap_failures_total") == 0
        assert _value(seen, "streamrl_serving_feature_lookup_failures_total") == 0
        assert _value(seen, "streamrl_serving_model_version", version=version) == 1

        rescraped = _samples(first.get("/metrics").text)
        assert _value(rescraped, "streamrl_serving_requests_total", endpoint="/metrics", status="200") == 1

        other = _samples(second.get("/metrics").text)
        assert _value(other, "streamrl_serving_requests_total", endpoint="/v1/act", status="200") == 3
        assert _value(other, "streamrl_serving_requests_total", endpoint="/v1/act", status="422") is None
        assert _value(other, "streamrl_serving_requests_total", endpoint="/healthz", status="200") is None
        assert _value(other, "streamrl_serving_request_latency_seconds_count", endpoint="/v1/act") == 3
        assert _value(other, "streamrl_serving_model_swaps_total") == 1


def test_model_version_gauge_exports_only_the_served_version():
    metrics = ServingMetrics()
    assert not [s for s in _samples(metrics.render().decode()) if s[0] == "streamrl_serving_model_version"]
    for version in ("v1", "v2", "v2", "v1"):
        metrics.model_version = version
        served = [
            (dict(labels), value)
            for (name, labels), value in _samples(metrics.render().decode()).items()
            if name == "streamrl_serving_model_version"
        ]
        assert served == [({"version": version}, 1.0)]
        assert metrics.model_version == version


def test_requests_total_and_add_read_back_through_the_registry():
    metrics = ServingMetrics()
    metrics.observe_request("/v1/act", 200, 0.002)
    metrics.observe_request("/v1/act", 200, 0.2)
    metrics.observe_request("/v1/act", 503, 0.001)
    metrics.add("decisions_logged", 7)
    metrics.add("decisions_failed")
    assert metrics.requests_total("/v1/act", 200) == 2
    assert metrics.requests_total("/v1/act", 503) == 1
    assert metrics.requests_total("/healthz", 200) == 0
    seen = _samples(metrics.render().decode())
    assert _value(seen, "streamrl_serving_decisions_logged_total") == 7
    assert _value(seen, "streamrl_serving_decisions_failed_total") == 1
    assert _value(seen, "streamrl_serving_request_latency_seconds_sum", endpoint="/v1/act") == pytest.approx(
        0.203
    )
    assert (
        _value(seen, "streamrl_serving_request_latency_seconds_bucket", endpoint="/v1/act", le="0.0025") == 2
    )


def _run_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `script` in a fresh interpreter at the repository root; its stdout (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_MULTIPROCESS_SCRIPT = """
from prometheus_client import values
assert values.ValueClass is not values.MutexValue, "prometheus_client is not in multiprocess mode"
from serving._metrics import ServingMetrics
first = ServingMetrics()
first.add("model_swaps", 3)
first.observe_request("/v1/act", 200, 0.01)
first.model_version = "v1"
print(ServingMetrics().render().decode())
"""


def test_a_new_app_starts_from_zero_in_prometheus_multiprocess_mode(tmp_path):
    """Importing Feast sets PROMETHEUS_MULTIPROC_DIR, which makes prometheus_client's own metric
    objects share one file per process; the app's metrics must not pick up an earlier app's counts."""
    seen = _samples(
        _run_python(_MULTIPROCESS_SCRIPT, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    )
    assert _value(seen, "streamrl_serving_model_swaps_total") == 0
    assert not [key for key in seen if key[0].startswith("streamrl_serving_request")]
    assert not [key for key in seen if key[0] == "streamrl_serving_model_version"]


_STOPPED_WORKER_SCRIPT = """
import sys
from serving._metrics import ServingMetrics
metrics = ServingMetrics(sys.argv[1])
metrics.start_publishing()
metrics.observe_request("/v1/act", 200, 0.004)
metrics.observe_request("/v1/act", 503, 0.0005)
metrics.add("decisions_logged", 4)
metrics.watch_decision_queue(lambda: 9, 100)
metrics.model_version = "v0"
metrics.stop_publishing()
"""


def test_workers_sharing_a_directory_scrape_as_one_server(tmp_path):
    """Counts of every worker that ran add up whichever worker answers; gauges count the live ones."""
    first, second = ServingMetrics(tmp_path), ServingMetrics(tmp_path)
    depth = {"first": 3, "second": 5}
    first.watch_decision_queue(lambda: depth["first"], 100)
    second.watch_decision_queue(lambda: depth["second"], 100)
    for latency in (0.002, 0.2):
        first.observe_request("/v1/act", 200, latency)
    second.observe_request("/v1/act", 200, 0.0004)
    first.add("decisions_logged", 2)
    second.add("decisions_logged", 1)
    first.model_version, second.model_version = "v1", "v2"
    first.start_publishing()
    second.start_publishing()
    # a worker that ran and stopped: a real process, now gone
    _run_python(_STOPPED_WORKER_SCRIPT, str(tmp_path))
    try:
        for scraped in (first, second):
            seen = _samples(scraped.render().decode())
            # by hand: 200s 2 + 1 + 1 (stopped), 503s 1 (stopped); latencies 0.002 + 0.2 + 0.0004 + 0.004 + 0.0005
            assert _value(seen, "streamrl_serving_requests_total", endpoint="/v1/act", status="200") == 4
            assert _value(seen, "streamrl_serving_requests_total", endpoint="/v1/act", status="503") == 1
            assert _value(seen, "streamrl_serving_request_latency_seconds_count", endpoint="/v1/act") == 5
            assert _value(
                seen, "streamrl_serving_request_latency_seconds_sum", endpoint="/v1/act"
            ) == pytest.approx(0.2069)
            # le=0.001 holds 0.0004 and 0.0005; le=0.005 adds 0.002 and 0.004
            assert (
                _value(
                    seen, "streamrl_serving_request_latency_seconds_bucket", endpoint="/v1/act", le="0.001"
                )
                == 2
            )
            assert (
                _value(
                    seen, "streamrl_serving_request_latency_seconds_bucket", endpoint="/v1/act", le="0.005"
                )
                == 4
            )
            assert _value(seen, "streamrl_serving_decisions_logged_total") == 7
            # gauges: the two live workers only (not the stopped one's 9 / 100 / v0)
            assert _value(seen, "streamrl_serving_decision_queue_depth") == 8
            assert _value(seen, "streamrl_serving_decision_queue_capacity") == 200
            assert _value(seen, "streamrl_serving_model_version", version="v1") == 1
            assert _value(seen, "streamrl_serving_model_version", version="v2") == 1
            assert _value(seen, "streamrl_serving_model_version", version="v0") is None
            assert _value(seen, "streamrl_serving_worker", pid=str(os.getpid())) == 1
            workers = [key for key in seen if key[0] == "streamrl_serving_worker"]
            assert len(workers) == 1, "the stopped worker's pid is not listed (the live two share this one)"
        # a worker's own counts are live; a peer's are as of its last publication
        first.observe_request("/v1/act", 200, 0.001)
        ok = ("streamrl_serving_requests_total", frozenset({("endpoint", "/v1/act"), ("status", "200")}))
        assert _samples(first.render().decode())[ok] == 5
        assert _samples(second.render().decode())[ok] == 4
        first.publish()
        assert _samples(second.render().decode())[ok] == 5
    finally:
        first.stop_publishing()
        second.stop_publishing()
