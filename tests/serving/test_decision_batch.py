"""`POST /v1/decisions/batch`: log-only mode for many decisions in one call, on a real registry,
onnxruntime and broker. Every decision of a good batch is logged as the app took it; a batch with
one bad decision is refused whole (nothing logged); each model answer carries the propensity the
deployed model's distribution gives it, recomputed here in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts import ActionKind
from serving import create_app
from serving.config import ContinuousActionConfig, UniformFallbackConfig
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS, FEATURES, linear_q_onnx
from trainer.policy import SoftmaxExploration

CANDIDATES = [{"id": f"item-{j}", "features": {"price": float(j), "quality": None}} for j in range(4)]
CONTINUOUS_ACTIONS = [
    ContinuousActionConfig(name="torque", low=-2.0, high=2.0),
    ContinuousActionConfig(name="gain", low=0.0, high=1.0),
]

WEIGHTS = np.array([[1.0, -0.5, 0.0], [0.0, 2.0, -1.0], [0.5, 0.5, 0.25]])  # [feature, action]
BIAS = np.array([0.2, -0.1, 0.0])
TEMPERATURE, EPSILON = 0.5, 0.1


def _numpy_distribution(features: dict, possible: list[str]) -> dict[str, float]:
    """softmax(Q / T) over the possible actions mixed with ε-uniform over them, Q = x·W + b (missing → 0)."""
    x = np.array([0.0 if features.get(n) is None else features[n] for n in FEATURES])
    q = x @ WEIGHTS + BIAS
    idx = [ACTIONS.index(a) for a in possible]
    z = q[idx] / TEMPERATURE
    softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    probabilities = (1 - EPSILON) * softmax + EPSILON / len(idx)
    return dict(zip(possible, probabilities, strict=True))


def _app_decisions(n: int, rng: np.random.Generator, prefix: str) -> list[dict]:
    """`n` decisions an app took itself (all of user "u", so they share one partition, in order)."""
    decisions = []
    for i in range(n):
        possible = [a for a in ACTIONS if rng.random() < 0.7] or ["none"]
        features = {name: float(rng.normal()) for name in FEATURES}
        if i % 5 == 0:
            features["f_hour"] = None
        chosen = possible[int(rng.integers(len(possible)))]
        decisions.append(
            {
                "entity_id": "u",
                "request_id": f"{prefix}-{i}",
                "sequence_number": i,
                "context_features": features,
                "possible_actions": possible,
                "action": chosen,
                "action_probability": round(float(rng.uniform(0.05, 1.0)), 6),
                "policy": "rules-v3",
            }
        )
    return decisions


def test_decision_batch_logs_every_decision_and_answers_the_model_choices(config, registry, local_stack):
    version = registry.register(
        linear_q_onnx(WEIGHTS, BIAS),
        feature_names=FEATURES,
        actions=ACTIONS,
        algorithm="linear_test",
        exploration=SoftmaxExploration(temperature=TEMPERATURE, epsilon=EPSILON),
    ).version
    registry.deploy(version, reason="test")
    decisions = _app_decisions(300, np.random.default_rng(5), "d")
    # The app may offer an action the model does not know: logged all the same, and only that
    # decision's model answer is an error (the rest of its batch is still scored).
    unknown = _app_decisions(3, np.random.default_rng(8), "unknown")
    unknown[1] |= {"possible_actions": ["sms", "none"], "action": "sms"}
    wrong_kind = {k: v for k, v in decisions[0].items() if k not in ("possible_actions", "action")}
    wrong_kind |= {"action_kind": "parametric", "candidates": CANDIDATES, "action": "item-1"}
    with TestClient(create_app(config)) as client:
        refused = client.post(
            "/v1/decisions/batch",
            json={"decisions": [{**decisions[1], "request_id": "x"}, {**wrong_kind, "request_id": "y"}]},
        )
        assert refused.status_code == 422
        assert refused.json()["message"].startswith(
            f"decisions.1.action_kind: the deployed model {version} serves discrete actions"
        )
        response = client.post("/v1/decisions/batch", json={"decisions": decisions})
        partly = client.post("/v1/decisions/batch", json={"decisions": unknown})
    assert response.status_code == 200, response.text
    answers = response.json()["responses"]
    assert [a["request_id"] for a in answers] == [d["request_id"] for d in decisions]
    assert partly.status_code == 200, partly.text
    first, sms, last = partly.json()["responses"]
    assert sms["model_decision"] is None and sms["model_decision_error"].startswith(
        "UnknownActionError: decisions.1: possible_actions ['sms'] are unknown"
    )
    for answer in (first, last):
        assert answer["model_decision_error"] is None and answer["model_decision"]["model_version"] == version
    distributions = []
    for decision, answer in zip(decisions, answers, strict=True):
        model_decision = answer["model_decision"]
        assert answer["model_decision_error"] is None
        assert model_decision["model_version"] == version and model_decision["action_kind"] == "discrete"
        assert model_decision["sequence_number"] == decision["sequence_number"]
        expected = _numpy_distribution(decision["context_features"], decision["possible_actions"])
        assert model_decision["action"] in expected  # only possible actions are ever chosen
        assert model_decision["action_probability"] == pytest.approx(
            expected[model_decision["action"]], abs=2e-6
        )
        distributions.append(expected)
    # Sampled from those distributions: the count of each action within 4.5 standard errors of
    # the sum of its probabilities over the 300 decisions (independent Bernoulli draws).
    for action in ACTIONS:
        p = np.array([e.get(action, 0.0) for e in distributions])
        count = sum(a["model_decision"]["action"] == action for a in answers)
        assert abs(count - p.sum()) <= 4.5 * math.sqrt((p * (1 - p)).sum()), (action, count, p.sum())

    ids = {d["request_id"] for d in decisions + unknown}
    logged = read_decisions(local_stack.bootstrap_servers, config.topics.decisions, ids)
    assert logged.keys() == ids  # not the refused batch's "x" and "y"
    for decision in decisions + unknown:
        event = logged[decision["request_id"]]
        assert event.action_kind is ActionKind.DISCRETE
        assert (event.action, event.action_probability, event.model_version) == (
            decision["action"],
            decision["action_probability"],
            "rules-v3",
        )
        assert event.possible_actions == decision["possible_actions"]
        assert event.context_features == decision["context_features"]
        assert event.sequence_number == decision["sequence_number"]


def test_a_decision_batch_with_one_bad_decision_logs_nothing(config, local_stack):
    """Without a model (and no `serving.action_kind`) a batch may mix kinds; each refused batch
    below holds good decisions too, and none of them reaches the broker."""
    day0 = config.model_copy(
        update={"fallback": UniformFallbackConfig(), "continuous_actions": CONTINUOUS_ACTIONS, "max_batch": 4}
    )
    good = _app_decisions(3, np.random.default_rng(6), "refused")
    vector = {
        "action_kind": "continuous",
        "entity_id": "u",
        "policy": "pid-v1",
        "action": [1.0, 0.25],
        "action_log_density": -1.5,
        "request_id": "refused-vector",
    }
    bad_batches = {
        "decisions.2.action_probability: Input should be less than or equal to 1": [
            *good[:2],
            {**good[2], "action_probability": 1.5},
        ],
        "decisions.1: Value error, action 'sms' is not among possible_actions": [
            good[0],
            {**good[1], "action": "sms"},
        ],
        "decisions.0.policy: Field required": [{k: v for k, v in good[0].items() if k != "policy"}, good[1]],
        "decisions.2.action: action.0 (torque) = 2.5 is outside [-2.0, 2.0]": [
            good[0],
            vector,
            {**vector, "action": [2.5, 0.5], "request_id": "refused-vector-2"},
        ],
        "at most max_batch=4 per call": [*good, vector, {**vector, "request_id": "refused-vector-2"}],
    }
    accepted = [
        {**good[0], "request_id": "ok-discrete"},
        {**vector, "request_id": "ok-vector"},
        {
            "action_kind": "parametric",
            "entity_id": "u",
            "policy": "popularity",
            "candidates": CANDIDATES,
            "action": "item-2",
            "action_probability": 0.5,
            "request_id": "ok-parametric",
        },
    ]
    with TestClient(create_app(day0)) as client:
        for message, batch in bad_batches.items():
            response = client.post("/v1/decisions/batch", json={"decisions": batch})
            assert response.status_code == 422, (message, response.text)
            assert message in response.json()["message"], (message, response.json())
        assert client.post("/v1/decisions/batch", json={"decisions": []}).status_code == 422
        response = client.post("/v1/decisions/batch", json={"decisions": accepted})
        assert response.status_code == 200, response.text
        answers = response.json()["responses"]
        assert [a["request_id"] for a in answers] == ["ok-discrete", "ok-vector", "ok-parametric"]
        assert all(
            a["model_decision"] is None and "no model is loaded" in a["model_decision_error"] for a in answers
        )
        metrics = client.get("/metrics").text
        assert 'streamrl_serving_requests_total{endpoint="/v1/decisions/batch",status="422"} 6.0' in metrics
        assert 'streamrl_serving_requests_total{endpoint="/v1/decisions/batch",status="200"} 1.0' in metrics
    # Every decision has mdp_id "u": one partition, logged in order, so once the accepted ones
    # are read every earlier one would have been read too.
    logged = read_decisions(
        local_stack.bootstrap_servers, day0.topics.decisions, {"ok-discrete", "ok-vector", "ok-parametric"}
    )
    assert set(logged) == {"ok-discrete", "ok-vector", "ok-parametric"}
    assert logged["ok-vector"].action_vector == [1.0, 0.25] and logged["ok-vector"].model_version == "pid-v1"
    assert logged["ok-parametric"].action_kind is ActionKind.PARAMETRIC
    assert logged["ok-parametric"].candidate_features == [c["features"] for c in CANDIDATES]


def test_openapi_declares_the_decision_batch_and_its_error_bodies(config):
    with TestClient(create_app(config)) as client:
        spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/decisions/batch"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request == {"$ref": "#/components/schemas/BatchLoggedDecisionRequest"}
    items = spec["components"]["schemas"]["BatchLoggedDecisionRequest"]["properties"]["decisions"]["items"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in items["oneOf"]} == {
        f"{kind}LoggedDecision" for kind in ("Discrete", "Parametric", "Continuous")
    }
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/BatchLoggedDecisionResponse"}
    for status in ("400", "422", "500", "503"):
        assert operation["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
