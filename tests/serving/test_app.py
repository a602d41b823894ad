"""`/v1/act`, `/v1/act/batch`, `/healthz`, `/metrics` on a real registry, onnxruntime and broker."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from serving import create_app
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS, FEATURES, linear_q_onnx, register_model
from trainer import ModelRegistry
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, Q_OUTPUT
from trainer.policy import SoftmaxExploration


def _expected_distribution(
    registry: ModelRegistry, version: str, features: list[dict], possible: list[list[str]]
):
    """The served distribution recomputed independently: Q from a fresh onnxruntime session, then
    softmax(Q/T) over the possible actions mixed with ε-uniform over them, written out here."""
    path, metadata = registry.get(version)
    exploration = metadata.exploration
    assert isinstance(exploration, SoftmaxExploration), exploration
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array(
        [[np.nan if f.get(n) is None else f[n] for n in FEATURES] for f in features], dtype=np.float32
    )
    mask = np.array([[1.0 if a in p else 0.0 for a in ACTIONS] for p in possible], dtype=np.float32)
    (q,) = session.run([Q_OUTPUT], {FEATURES_INPUT: x, MASK_INPUT: mask})
    possible_q = np.where(mask > 0.5, q.astype(np.float64) / exploration.temperature, -np.inf)
    weights = np.exp(possible_q - possible_q.max(axis=1, keepdims=True))
    softmax = weights / weights.sum(axis=1, keepdims=True)
    uniform = mask / mask.sum(axis=1, keepdims=True)
    return (1.0 - exploration.epsilon) * softmax + exploration.epsilon * uniform


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not in /metrics:\n{text}")


def test_act_serves_possible_action_with_served_propensity_and_logs_decision(config, registry, local_stack):
    version = register_model(registry, seed=1)
    registry.deploy(version, reason="test")
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(24):
        features = {"f_age": float(rng.normal()), "f_clicks": None if i % 3 == 0 else float(rng.normal())}
        if i % 2:
            features["f_hour"] = float(rng.normal())
        features["extra_not_in_model"] = 1.5
        possible = [ACTIONS[j] for j in range(3) if (i >> j) % 2 or j == i % 3]
        bodies.append({"entity_id": f"user-{i}", "context_features": features, "possible_actions": possible})
    expected = _expected_distribution(
        registry, version, [b["context_features"] for b in bodies], [b["possible_actions"] for b in bodies]
    )
    with TestClient(create_app(config)) as client:
        responses = [client.post("/v1/act", json=body) for body in bodies]
        for body, response, distribution in zip(bodies, responses, expected, strict=True):
            assert response.status_code == 200, response.text
            served = response.json()
            assert served["action"] in body["possible_actions"]
            assert served["model_version"] == version
            assert served["mdp_id"] == body["entity_id"]  # default mdp_id
            assert served["sequence_number"] > 1_600_000_000_000  # default: ms since epoch
            assert served["action_probability"] == pytest.approx(
                distribution[ACTIONS.index(served["action"])], abs=1e-6
            )
        ids = {r.json()["request_id"] for r in responses}
        assert len(ids) == len(bodies)  # fresh uuid4 per request
        logged = read_decisions(local_stack.bootstrap_servers, config.topics.decisions, ids)
        assert logged.keys() == ids
        for body, response in zip(bodies, responses, strict=True):
            served = response.json()
            event = logged[served["request_id"]]
            assert (event.action, event.model_version, event.entity_id) == (
                served["action"],
                version,
                body["entity_id"],
            )
            assert event.action_probability == pytest.approx(served["action_probability"])
            assert event.context_features == body["context_features"]
            assert event.possible_actions == body["possible_actions"]
            assert event.timestamp.utcoffset().total_seconds() == 0
        deadline = time.monotonic() + 10
        while _metric(client.get("/metrics").text, "streamrl_serving_decisions_logged_total") < len(bodies):
            assert time.monotonic() < deadline, "decisions_logged_total never reached the number served"
            time.sleep(0.1)
        metrics = client.get("/metrics").text
        assert _metric(metrics, "streamrl_serving_decisions_failed_total") == 0
        assert f'streamrl_serving_requests_total{{endpoint="/v1/act",status="200"}} {len(bodies)}' in metrics
        assert f'streamrl_serving_model_version{{version="{version}"}} 1' in metrics
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["model_version"] == version


def test_served_propensities_are_the_hand_computed_softmax_epsilon_mix(config, registry):
    """Q = bias = (0, ln 2, ln 3) whatever the features, softmax T = 1 mixed with ε = 0.2 uniform:
    all possible: 0.8·(1, 2, 3)/6 + 0.2/3 = (0.2, 1/3, 0.4667);
    email, none:  0.8·(1, 3)/4 + 0.2/2 = (0.3, 0.7);
    push only:    1."""
    bias = np.log([1.0, 2.0, 3.0])
    version = registry.register(
        linear_q_onnx(np.zeros((len(FEATURES), len(ACTIONS))), bias),
        feature_names=FEATURES,
        actions=ACTIONS,
        algorithm="linear_test",
        exploration=SoftmaxExploration(temperature=1.0, epsilon=0.2),
    ).version
    registry.deploy(version, reason="test")
    cases = [
        (ACTIONS, {"email": 0.2, "push": 1 / 3, "none": 0.4 + 0.2 / 3}),
        (["email", "none"], {"email": 0.3, "none": 0.7}),
        (["push"], {"push": 1.0}),
    ]
    with TestClient(create_app(config)) as client:
        for possible, expected in cases:
            for i in range(20):
                body = {"entity_id": f"u{i}", "context_features": {"f_age": i}, "possible_actions": possible}
                served = client.post("/v1/act", json=body).json()
                assert served["action_probability"] == pytest.approx(expected[served["action"]], abs=1e-6)


def test_batch_samples_from_the_served_distribution(config, registry):
    """1,200 identical rows through /v1/act/batch: action frequencies match the served propensities."""
    version = register_model(registry, seed=2)
    registry.deploy(version, reason="test")
    row = {
        "entity_id": "u",
        "context_features": {"f_age": 0.3, "f_clicks": -0.2, "f_hour": 0.1},
        "possible_actions": ACTIONS,
        "mdp_id": "episode-1",
    }
    expected = _expected_distribution(registry, version, [row["context_features"]], [ACTIONS])[0]
    with TestClient(create_app(config)) as client:
        counts = dict.fromkeys(ACTIONS, 0)
        for b in range(4):
            batch = [dict(row, sequence_number=b * 300 + i, request_id=f"r{b}-{i}") for i in range(300)]
            response = client.post("/v1/act/batch", json={"requests": batch})
            assert response.status_code == 200, response.text
            served = response.json()["responses"]
            assert [s["request_id"] for s in served] == [r["request_id"] for r in batch]
            assert [s["sequence_number"] for s in served] == [r["sequence_number"] for r in batch]
            for s in served:
                counts[s["action"]] += 1
                assert s["action_probability"] == pytest.approx(
                    expected[ACTIONS.index(s["action"])], abs=1e-6
                )
                assert s["mdp_id"] == "episode-1"
        too_many = client.post("/v1/act/batch", json={"requests": [row] * 301})
        assert too_many.status_code == 422 and "max_batch=300" in too_many.json()["message"]
    frequencies = np.array([counts[a] for a in ACTIONS]) / 1200
    # 4.5 standard errors of a binomial proportion at n=1200: fails only on a real sampling bug.
    assert np.all(np.abs(frequencies - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / 1200) + 1e-9), (
        frequencies,
        expected,
    )


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"context_features": {}, "possible_actions": ["email"]}, 422, ["entity_id", "Field required"]),
        ({"entity_id": "u", "possible_actions": []}, 422, ["possible_actions", "at least 1"]),
        (
            {"entity_id": "u", "possible_actions": ["email", "push", "email"]},
            422,
            ["possible_actions", "duplicated", "email"],
        ),
        (
            {"entity_id": "u", "possible_actions": ["email", "fax", "pigeon"]},
            422,
            ["fax", "pigeon", "unknown to model"],
        ),
        ({"entity_id": 17, "possible_actions": ["email"]}, 422, ["entity_id", "valid string"]),
        (
            {"entity_id": "u", "possible_actions": ["email"], "context_features": {"f_age": "3"}},
            422,
            ["context_features.f_age", "valid number"],
        ),
        ({"entity_id": "u", "possible_actions": "email"}, 422, ["possible_actions", "valid list"]),
        ({"entity_id": "u", "possible_actions": ["email"], "sequence_number": -1}, 422, ["sequence_number"]),
        ({"entity_id": "u", "possible_actions": ["email"], "colour": "red"}, 422, ["colour", "Extra inputs"]),
        (b'{"entity_id": "u", "possible_actions": ["email"', 400, ["not valid JSON"]),
        (
            b'{"entity_id": "u", "possible_actions": ["email"], "context_features": {"f_age": NaN}}',
            422,
            ["context_features.f_age", "finite"],
        ),
    ],
)
def test_malformed_requests_get_4xx_naming_the_problem(config, registry, body, status, names):
    registry.deploy(register_model(registry, seed=3), reason="test")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        if isinstance(body, bytes):
            response = client.post("/v1/act", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/v1/act", json=body)
        assert response.status_code == status, response.text
        payload = response.json()
        for name in names:
            assert name in payload["message"], (name, payload)
        assert payload["request_id"]
        batch = client.post(
            "/v1/act/batch",
            json={"requests": [{"entity_id": "u", "possible_actions": ["email"]}, body]}
            if not isinstance(body, bytes)
            else {"requests": []},
        )
        assert batch.status_code == 422, batch.text
        metrics = client.get("/metrics").text
        assert f'streamrl_serving_requests_total{{endpoint="/v1/act",status="{status}"}} 1' in metrics


def test_no_model_deployed_is_503_until_one_is(config, registry):
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["model_version"] is None
        response = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ["email"]})
        assert response.status_code == 503
        assert "no model is loaded" in response.json()["message"]
        version = register_model(registry, seed=4)
        registry.deploy(version, reason="first model")
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the poller never picked up the first deploy"
            time.sleep(0.05)
        response = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ["email"]})
        assert response.status_code == 200 and response.json()["model_version"] == version
        # one possible action: it is chosen with probability 1 whatever the exploration
        assert response.json()["action"] == "email" and response.json()["action_probability"] == 1.0


def test_internal_error_is_500_with_the_request_id(config, registry):
    """A feature value that overflows float32 makes the model's Q non-finite: 500, not a bogus decision."""
    registry.deploy(register_model(registry, seed=5), reason="test")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        body = {
            "entity_id": "u",
            "possible_actions": ACTIONS,
            "request_id": "req-42",
            "context_features": {"f_age": 1e300, "f_clicks": -1e300},
        }
        response = client.post("/v1/act", json=body)
        assert response.status_code == 500, response.text
        assert response.json()["request_id"] == "req-42"
        assert "req-42" in response.json()["message"] and "internal error" in response.json()["message"]
        assert (
            'streamrl_serving_requests_total{endpoint="/v1/act",status="500"} 1'
            in client.get("/metrics").text
        )
        assert client.post("/v1/act", json=dict(body, context_features={})).status_code == 200


def test_decision_log_failure_keeps_serving_and_is_reported(config, registry):
    """Broker unreachable (a port nobody listens on): requests still succeed, the loss is counted and shown."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    registry.deploy(register_model(registry, seed=6), reason="test")
    dead = config.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{dead_port}", "log_flush_timeout_s": 2.0}
    )
    with TestClient(create_app(dead)) as client:
        response = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ACTIONS})
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        while _metric(client.get("/metrics").text, "streamrl_serving_decisions_failed_total") < 1:
            assert time.monotonic() < deadline, "the undelivered decision was never counted"
            time.sleep(0.1)
        health = client.get("/healthz").json()
        assert health["status"] == "degraded"
        assert any("decision logging failed" in reason for reason in health["degraded_reasons"]), health
        assert _metric(client.get("/metrics").text, "streamrl_serving_decisions_logged_total") == 0


def test_online_features_are_overlaid_by_request_features(config, registry, local_stack, tmp_path):
    """Real Feast + Redis: the decision uses online features, request values win, null means missing."""
    import pandas as pd

    from features.store import FeatureStoreConfig, build_feature_store, push_context_features

    store_config = FeatureStoreConfig(
        repo_dir=tmp_path / "feast",
        offline_dir=tmp_path / "offline",
        project=f"serving_{tmp_path.name[-8:].replace('-', '_')}",
        redis_connection=local_stack.redis_url,
        feature_names=FEATURES,
    )
    store = build_feature_store(store_config)
    now = pd.Timestamp.now(tz="UTC")
    push_context_features(
        store,
        pd.DataFrame(
            {
                "entity_id": ["alice"],
                "event_timestamp": [now],
                "f_age": [30.0],
                "f_clicks": [2.0],
                "f_hour": [5.0],
            }
        ),
        offline=False,
    )
    version = register_model(registry, seed=8)
    registry.deploy(version, reason="test")
    with TestClient(create_app(config.model_copy(update={"feature_store": store_config}))) as client:
        bodies = [
            {
                "entity_id": "alice",
                "context_features": {"f_hour": 9.0, "f_age": None},
                "possible_actions": ACTIONS,
            },
            {"entity_id": "nobody", "context_features": {"f_hour": 1.0}, "possible_actions": ACTIONS},
        ]
        used = [
            {"f_age": None, "f_clicks": 2.0, "f_hour": 9.0},
            {"f_age": None, "f_clicks": None, "f_hour": 1.0},
        ]
        expected = _expected_distribution(registry, version, used, [ACTIONS, ACTIONS])
        served = [client.post("/v1/act", json=b).json() for b in bodies]
        batch = client.post("/v1/act/batch", json={"requests": bodies}).json()["responses"]
        for row, s in enumerate([*served, *batch]):
            assert s["action_probability"] == pytest.approx(
                expected[row % 2][ACTIONS.index(s["action"])], abs=1e-6
            )
        logged = read_decisions(
            local_stack.bootstrap_servers, config.topics.decisions, {s["request_id"] for s in served}
        )
        assert [logged[s["request_id"]].context_features for s in served] == used


def test_a_named_app_serves_under_its_route_and_refuses_other_apps(config, registry):
    version = register_model(registry, seed=1)
    registry.deploy(version, reason="test")
    body = {"entity_id": "u", "context_features": {"f_age": 0.5}, "possible_actions": list(ACTIONS)}
    with TestClient(create_app(config.model_copy(update={"app": "shop"}))) as client:
        served = client.post("/v1/apps/shop/act", json=body)
        assert served.status_code == 200, served.text
        assert served.json()["model_version"] == version and served.json()["action"] in ACTIONS
        batch = client.post("/v1/apps/shop/act/batch", json={"requests": [body, body]})
        assert batch.status_code == 200 and len(batch.json()["responses"]) == 2
        assert client.post("/v1/act", json=body).status_code == 200  # the unprefixed route stays
        other = client.post("/v1/apps/news/act", json=body)
        assert other.status_code == 404
        assert (
            other.json()["error"] == "UnknownAppError" and "serves only app 'shop'" in other.json()["message"]
        )
        assert client.get("/v1/apps/shop/healthz").json()["model_version"] == version
        counted = client.get("/metrics").text
    # Prefixed calls are counted with their /v1/… endpoint, not as "other".
    line = 'streamrl_serving_requests_total{endpoint="/v1/act/batch",status="200"}'
    assert _metric(counted, line) == 1.0
