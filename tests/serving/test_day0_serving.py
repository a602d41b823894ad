"""Day 0 without a model: the uniform fallback (propensity 1/n, or density 1/Π(high − low)) until a
model is deployed, and log-only mode (`POST /v1/decisions`), which logs the app's own decision and
answers what the deployed model would have done. A deployed model of another kind is refused and
the previous one keeps serving."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts import ActionKind
from serving import create_app
from serving.config import ContinuousActionConfig, UniformFallbackConfig
from tests.serving import _kind_models as km
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS, linear_q_onnx, register_model
from trainer.policy import SoftmaxExploration
from trainer.registry import DeploymentEvent, DeploymentKind, DeploymentState

CONTINUOUS_ACTIONS = [
    ContinuousActionConfig(name=name, low=low, high=high)
    for name, low, high in zip(km.DIMENSIONS, km.ACTION_LOW, km.ACTION_HIGH, strict=True)
]
CANDIDATES = [{"id": f"item-{j}", "features": {"price": float(j), "quality": None}} for j in range(4)]


@pytest.fixture(scope="module")
def continuous_model() -> km.ExportedKind:
    return km.continuous()


@pytest.fixture
def day0(config):
    """The shared config with the uniform fallback and a continuous action space."""
    return config.model_copy(
        update={"fallback": UniformFallbackConfig(), "continuous_actions": CONTINUOUS_ACTIONS}
    )


def _wait_for(client: TestClient, version: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/healthz").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"model {version} never became the served one"
        time.sleep(0.05)


def test_uniform_fallback_serves_every_kind_until_a_model_is_deployed(day0, registry, local_stack):
    discrete = {"entity_id": "u", "possible_actions": ACTIONS}
    parametric = {"action_kind": "parametric", "entity_id": "u", "candidates": CANDIDATES}
    continuous = {"action_kind": "continuous", "entity_id": "u"}
    uniform_log_density = -(math.log(4.0) + math.log(1.0))
    with TestClient(create_app(day0)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["model_version"] == "day0-uniform"
        batch = client.post("/v1/act/batch", json={"requests": [discrete, parametric, continuous] * 100})
        assert batch.status_code == 200, batch.text
        served = batch.json()["responses"]
        counts = {"discrete": np.zeros(3), "parametric": np.zeros(4)}
        for s in served:
            assert s["model_version"] == "day0-uniform"
            if s["action_kind"] == "discrete":
                assert s["action_probability"] == pytest.approx(1 / 3, abs=1e-12)
                counts["discrete"][ACTIONS.index(s["action"])] += 1
            elif s["action_kind"] == "parametric":
                assert s["action_probability"] == pytest.approx(1 / 4, abs=1e-12)
                counts["parametric"][int(s["action"].split("-")[1])] += 1
            else:
                assert s["action_log_density"] == pytest.approx(uniform_log_density, abs=1e-12)
                assert -2.0 <= s["action"][0] <= 2.0 and 0.0 <= s["action"][1] <= 1.0
                assert s["action_mean"] == [0.0, 0.5]
        # Roughly uniform: every count within 4.5 binomial standard errors of n/k (100 draws each).
        for k, c in ((3, counts["discrete"]), (4, counts["parametric"])):
            assert np.all(np.abs(c - 100 / k) <= 4.5 * math.sqrt(100 * (1 / k) * (1 - 1 / k))), c
        vectors = np.array([s["action"] for s in served if s["action_kind"] == "continuous"])
        assert vectors[:, 0].std() > 0.8 and vectors[:, 1].std() > 0.2  # U(-2, 2): 1.15, U(0, 1): 0.29
        version = register_model(registry, seed=30)
        registry.deploy(version, reason="first model")
        _wait_for(client, version)
        after = client.post("/v1/act", json=discrete)
        assert after.status_code == 200 and after.json()["model_version"] == version
        refused = client.post("/v1/act", json=parametric)
        assert refused.status_code == 422 and "serves discrete actions" in refused.json()["message"]
    first = {s["request_id"] for s in served[:3]}
    logged = read_decisions(local_stack.bootstrap_servers, day0.topics.decisions, first)
    logged = {request_id: logged[request_id] for request_id in first}
    by_kind = {event.action_kind: event for event in logged.values()}
    assert by_kind[ActionKind.DISCRETE].action_probability == pytest.approx(1 / 3)
    assert by_kind[ActionKind.PARAMETRIC].candidate_features == [c["features"] for c in CANDIDATES]
    assert by_kind[ActionKind.CONTINUOUS].action_log_density == pytest.approx(uniform_log_density)
    assert by_kind[ActionKind.CONTINUOUS].possible_actions == km.DIMENSIONS
    assert {e.model_version for e in logged.values()} == {"day0-uniform"}


def test_without_fallback_or_action_space_continuous_requests_get_503(config):
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        response = client.post("/v1/act", json={"action_kind": "continuous", "entity_id": "u"})
        assert response.status_code == 503 and "no model is loaded" in response.json()["message"]
        logged = client.post(
            "/v1/decisions",
            json={
                "action_kind": "continuous",
                "entity_id": "u",
                "policy": "pid-v1",
                "action": [0.1, 0.2],
                "action_log_density": -1.0,
            },
        )
        assert logged.status_code == 503 and "serving.continuous_actions" in logged.json()["message"]


def test_log_only_mode_logs_the_app_decision_and_answers_the_model_choice(config, registry, local_stack):
    """Before a model: logged, model_decision null. After: the model's sampled action with its
    propensity (hand computed: Q = (0, ln 2, ln 3), softmax T = 1 → (1, 2, 3)/6), never logged."""
    app_decision = {
        "entity_id": "u",
        "context_features": {"f_age": 0.5},
        "possible_actions": ACTIONS,
        "action": "push",
        "action_probability": 0.25,
        "policy": "rules-v3",
    }
    with TestClient(create_app(config)) as client:
        before = client.post("/v1/decisions", json={**app_decision, "request_id": "before"})
        assert before.status_code == 200, before.text
        assert before.json()["model_decision"] is None
        assert "no model is loaded" in before.json()["model_decision_error"]
        version = registry.register(
            linear_q_onnx(np.zeros((3, 3)), np.log([1.0, 2.0, 3.0])),
            feature_names=["f_age", "f_clicks", "f_hour"],
            actions=ACTIONS,
            algorithm="linear_test",
            exploration=SoftmaxExploration(temperature=1.0, epsilon=0.0),
        ).version
        registry.deploy(version, reason="candidate")
        _wait_for(client, version)
        afters = [
            client.post("/v1/decisions", json={**app_decision, "request_id": f"after-{i}"}) for i in range(20)
        ]
    expected = {"email": 1 / 6, "push": 2 / 6, "none": 3 / 6}
    for after in afters:
        assert after.status_code == 200, after.text
        model_decision = after.json()["model_decision"]
        assert model_decision["model_version"] == version and model_decision["action_kind"] == "discrete"
        assert model_decision["action_probability"] == pytest.approx(
            expected[model_decision["action"]], abs=1e-6
        )
    ids = {"before", *(f"after-{i}" for i in range(20))}
    logged = read_decisions(local_stack.bootstrap_servers, config.topics.decisions, ids)
    assert logged.keys() == ids  # the app's decisions only: the model's answers are not logged
    for event in logged.values():
        assert (event.action, event.action_probability, event.model_version) == ("push", 0.25, "rules-v3")
        assert event.context_features == {"f_age": 0.5}


def test_log_only_mode_checks_continuous_and_parametric_decisions(
    day0, registry, continuous_model, local_stack
):
    vector = {"action_kind": "continuous", "entity_id": "arm", "policy": "pid-v1", "action_log_density": -1.5}
    parametric = {
        "action_kind": "parametric",
        "entity_id": "shop",
        "policy": "popularity",
        "candidates": CANDIDATES,
        "action": "item-2",
        "action_probability": 0.5,
        "request_id": "shop-1",
    }
    with TestClient(create_app(day0)) as client:
        wrong_length = client.post("/v1/decisions", json={**vector, "action": [0.1]})
        assert wrong_length.status_code == 422
        assert wrong_length.json()["message"] == (
            "action: has 1 values; expected 2, one per action dimension ['torque', 'gain']"
        )
        outside = client.post("/v1/decisions", json={**vector, "action": [2.5, 0.5]})
        assert outside.status_code == 422
        assert "action.0 (torque) = 2.5 is outside [-2.0, 2.0]" in outside.json()["message"]
        ok = client.post("/v1/decisions", json={**vector, "action": [1.0, 0.25], "request_id": "arm-1"})
        assert ok.status_code == 200 and ok.json()["model_decision"] is None
        assert client.post("/v1/decisions", json=parametric).status_code == 200
        not_a_candidate = client.post("/v1/decisions", json={**parametric, "action": "item-9"})
        assert (
            not_a_candidate.status_code == 422
            and "not among the candidate ids" in not_a_candidate.json()["message"]
        )
        for p in (0.0, 1.5):
            bad = client.post("/v1/decisions", json={**parametric, "action_probability": p})
            assert bad.status_code == 422 and "action_probability" in bad.json()["message"]
        no_policy = client.post("/v1/decisions", json={k: v for k, v in parametric.items() if k != "policy"})
        assert no_policy.status_code == 422 and "policy: Field required" in no_policy.json()["message"]

        version = continuous_model.register(registry)
        registry.deploy(version, reason="candidate")
        _wait_for(client, version)
        answered = client.post(
            "/v1/decisions", json={**vector, "action": [-1.0, 0.75], "request_id": "arm-2"}
        )
        assert answered.status_code == 200, answered.text
        model_decision = answered.json()["model_decision"]
        assert model_decision["model_version"] == version and len(model_decision["action"]) == 2
        assert math.isfinite(model_decision["action_log_density"])
        refused = client.post("/v1/decisions", json=parametric)
        assert refused.status_code == 422 and refused.json()["message"].startswith(
            "action_kind: the deployed model"
        )
    logged = read_decisions(
        local_stack.bootstrap_servers, day0.topics.decisions, {"arm-1", "arm-2", "shop-1"}
    )
    assert (logged["arm-1"].action_vector, logged["arm-1"].action_log_density) == ([1.0, 0.25], -1.5)
    assert logged["arm-1"].possible_actions == km.DIMENSIONS and logged["arm-1"].model_version == "pid-v1"
    assert logged["arm-2"].action_vector == [-1.0, 0.75]
    shop = logged["shop-1"]
    assert (shop.action_kind, shop.action, shop.action_probability, shop.model_version) == (
        ActionKind.PARAMETRIC,
        "item-2",
        0.5,
        "popularity",
    )
    assert shop.possible_actions == [c["id"] for c in CANDIDATES]


def test_a_model_of_another_kind_is_refused_and_the_previous_one_keeps_serving(
    config, registry, continuous_model
):
    discrete = register_model(registry, seed=31)
    registry.deploy(discrete, reason="first")
    with TestClient(create_app(config.model_copy(update={"poll_interval_s": 0.05}))) as client:
        _wait_for(client, discrete)
        other_kind = continuous_model.register(registry)
        registry.deploy(other_kind, reason="wrong family")
        deadline = time.monotonic() + 10
        while not client.get("/healthz").json()["degraded_reasons"]:
            assert time.monotonic() < deadline, "the refused model was never reported"
            time.sleep(0.05)
        health = client.get("/healthz").json()
        assert health["model_version"] == discrete and health["status"] == "degraded"
        (reason,) = health["degraded_reasons"]
        assert other_kind in reason and "serves continuous actions, but this server serves discrete" in reason
        response = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ACTIONS})
        assert response.status_code == 200 and response.json()["model_version"] == discrete
        assert "streamrl_serving_model_swap_failures_total 1.0" in client.get("/metrics").text


def test_a_continuous_model_with_other_bounds_than_configured_is_refused(day0, registry, continuous_model):
    narrower = day0.model_copy(
        update={
            "action_kind": ActionKind.CONTINUOUS,
            "continuous_actions": [
                CONTINUOUS_ACTIONS[0],
                ContinuousActionConfig(name="gain", low=0.0, high=0.5),
            ],
        }
    )
    version = continuous_model.register(registry)
    registry.deploy(version, reason="test")
    with TestClient(create_app(narrower)) as client:
        health = client.get("/healthz").json()
        assert health["model_version"] == "day0-uniform", health
        assert "action bounds are low=[-2.0, 0.0], high=[2.0, 1.0]" in health["degraded_reasons"][0]
        served = client.post("/v1/act", json={"action_kind": "continuous", "entity_id": "u"}).json()
        assert served["model_version"] == "day0-uniform" and 0.0 <= served["action"][1] <= 0.5
        assert served["action_log_density"] == pytest.approx(-(math.log(4.0) + math.log(0.5)))
        discrete = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ACTIONS})
        assert discrete.status_code == 422
        assert discrete.json()["message"].startswith(
            "action_kind: this server (serving.action_kind) serves continuous"
        )


def test_a_model_whose_graph_misses_its_signature_is_refused_by_serving_too(config, registry):
    """A "linear_thompson" model without the posterior outputs, deployed by moving the pointer by
    hand (the registry's deploy refuses it): serving refuses it naming the missing output."""
    good = register_model(registry, seed=32)
    registry.deploy(good, reason="first")
    broken = registry.register(
        linear_q_onnx(np.zeros((3, 3)), np.zeros(3)),
        feature_names=["f_age", "f_clicks", "f_hour"],
        actions=ACTIONS,
        algorithm="linear_thompson",
    ).version
    state = registry.deployment_state()
    event = DeploymentEvent(
        kind=DeploymentKind.DEPLOY, version=broken, previous=good, at=datetime.now(UTC), reason="by hand"
    )
    with TestClient(create_app(config)) as client:
        _wait_for(client, good)
        registry.pointer_path.write_text(
            DeploymentState(current=broken, history=[*state.history, event]).model_dump_json()
        )
        deadline = time.monotonic() + 10
        while not client.get("/healthz").json()["degraded_reasons"]:
            assert time.monotonic() < deadline, "the refused model was never reported"
            time.sleep(0.05)
        (reason,) = client.get("/healthz").json()["degraded_reasons"]
        assert broken in reason and "SignatureMismatchError" in reason and "reward_mean" in reason, reason
        served = client.post("/v1/act", json={"entity_id": "u", "possible_actions": ACTIONS})
        assert served.status_code == 200 and served.json()["model_version"] == good
