"""Every action kind over HTTP with a real exported model: the served propensity (or log density) is
the one recomputed here from a fresh onnxruntime session and the served rule, and the logged
DecisionEvent read back from the broker carries the kind's fields. Wrong kinds and bad candidates
get a 422 naming the field; OpenAPI shows each kind's request, response and error schemas."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts import ActionKind
from serving import create_app
from tests.serving import _kind_models as km
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    ACTION_LOC_OUTPUT,
    ACTION_LOG_STD_OUTPUT,
    ACTION_MEAN_OUTPUT,
    CANDIDATE_MASK_INPUT,
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
    SCORES_OUTPUT,
)


@pytest.fixture(scope="module")
def models() -> dict[str, km.ExportedKind]:
    """One tiny model per family, exported once for the module (~2 s)."""
    return {
        "thompson": km.thompson(),
        "linucb": km.linucb(),
        "parametric": km.parametric(),
        "continuous": km.continuous(),
    }


def _deploy(registry, model: km.ExportedKind) -> str:
    version = model.register(registry)
    registry.deploy(version, reason="test")
    return version


def _binomial_ok(counts: np.ndarray, expected: np.ndarray, n: int) -> bool:
    """Frequencies within 4.5 standard errors of a binomial proportion (fails only on a real bug)."""
    return bool(np.all(np.abs(counts / n - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / n) + 1e-9))


def test_thompson_draws_per_request_and_logs_the_exact_propensity(config, registry, models, local_stack):
    """1,200 identical requests: each answer's propensity is P(argmax of the posterior draws), computed
    here by quadrature from the graph's reward_mean and exploration_width; the choice frequencies
    match it. A subset of possible actions changes the propensities to the subset's."""
    model = models["thompson"]
    version = _deploy(registry, model)
    context = {"f_age": 0.4, "f_clicks": -0.3, "f_hour": None}
    subset = ["email", "none"]
    mean, width = model.session().run(
        [REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT], km.discrete_feeds([context], [ACTIONS])
    )
    expected = km.thompson_reference(mean[0].astype(np.float64), width[0].astype(np.float64))
    subset_index = [ACTIONS.index(a) for a in subset]
    expected_subset = km.thompson_reference(mean[0, subset_index], width[0, subset_index])
    assert expected.min() > 0.1, f"the test model should make every arm likely: {expected}"
    n = 1200
    with TestClient(create_app(config)) as client:
        counts = np.zeros(len(ACTIONS))
        for _ in range(n // 300):
            rows = [
                {"entity_id": f"u{i}", "context_features": context, "possible_actions": ACTIONS}
                for i in range(300)
            ]
            served = client.post("/v1/act/batch", json={"requests": rows})
            assert served.status_code == 200, served.text
            for s in served.json()["responses"]:
                a = ACTIONS.index(s["action"])
                counts[a] += 1
                assert s["action_kind"] == "discrete" and s["model_version"] == version
                assert s["action_probability"] == pytest.approx(expected[a], abs=1e-4)
        singles = [
            client.post(
                "/v1/act", json={"entity_id": "v", "context_features": context, "possible_actions": subset}
            ).json()
            for _ in range(10)
        ]
    assert _binomial_ok(counts, expected, n), (counts / n, expected)
    logged = read_decisions(
        local_stack.bootstrap_servers, config.topics.decisions, {s["request_id"] for s in singles}
    )
    for s in singles:
        event = logged[s["request_id"]]
        assert s["action"] in subset
        assert s["action_probability"] == pytest.approx(expected_subset[subset.index(s["action"])], abs=1e-4)
        assert event.action_kind is ActionKind.DISCRETE and event.schema_version == 2
        assert (event.action, event.action_probability, event.model_version) == (
            s["action"],
            s["action_probability"],
            version,
        )
        assert event.possible_actions == subset


def test_linucb_is_greedy_on_the_upper_bound_with_the_configured_exploration(config, registry, models):
    """ε-greedy (ε = 0.2) on q_values = reward_mean + exploration_width: 0.8·[argmax] + 0.2/n."""
    model = models["linucb"]
    _deploy(registry, model)
    rng = np.random.default_rng(1)
    contexts = [{name: float(rng.normal()) for name in ("f_age", "f_clicks", "f_hour")} for _ in range(8)]
    possible = [ACTIONS if i % 2 else ACTIONS[: 2 + i % 3 // 2] for i in range(8)]
    q, mean, width = model.session().run(
        [Q_OUTPUT, REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT], km.discrete_feeds(contexts, possible)
    )
    with TestClient(create_app(config)) as client:
        for i, (context, actions) in enumerate(zip(contexts, possible, strict=True)):
            index = [ACTIONS.index(a) for a in actions]
            ucb = (mean[i] + width[i])[index]
            np.testing.assert_allclose(q[i, index], ucb, atol=1e-5)  # the graph's q is the UCB
            best = actions[int(np.argmax(ucb))]
            for _ in range(5):
                s = client.post(
                    "/v1/act",
                    json={"entity_id": "u", "context_features": context, "possible_actions": actions},
                ).json()
                greedy = 0.8 if s["action"] == best else 0.0
                assert s["action_probability"] == pytest.approx(greedy + 0.2 / len(actions), abs=1e-9), (i, s)


def test_parametric_serves_a_candidate_with_its_softmax_propensity_and_logs_the_candidates(
    config, registry, models, local_stack
):
    """Candidates of varying count, with a null and an unknown feature: the propensity is
    0.9·softmax(score / 0.5) + 0.1/K over the request's candidates, scores from the graph."""
    model = models["parametric"]
    version = _deploy(registry, model)
    rng = np.random.default_rng(2)
    bodies = []
    for i in range(6):
        candidates = [
            {
                "id": f"item-{i}-{j}",
                "features": {
                    "price": float(rng.uniform(1, 9)),
                    "quality": None if j == 1 else float(rng.normal()),
                },
            }
            for j in range(2 + i % 3)
        ]
        candidates[0]["features"]["colour_code"] = 3.0  # not a model feature: ignored
        bodies.append(
            {
                "action_kind": "parametric",
                "entity_id": f"user-{i}",
                "context_features": {"f_age": float(rng.normal()), "f_hour": None},
                "candidates": candidates,
            }
        )
    session = model.session()
    with TestClient(create_app(config)) as client:
        responses = [client.post("/v1/act", json=body) for body in bodies]
    for response in responses:
        assert response.status_code == 200, response.text
    served = [r.json() for r in responses]
    logged = read_decisions(
        local_stack.bootstrap_servers, config.topics.decisions, {s["request_id"] for s in served}
    )
    for body, s in zip(bodies, served, strict=True):
        ids = [c["id"] for c in body["candidates"]]
        candidates = np.array(
            [
                [[np.nan if c["features"].get(n) is None else c["features"][n] for n in km.ACTION_FEATURES]]
                for c in body["candidates"]
            ],
            dtype=np.float32,
        ).transpose(1, 0, 2)
        (scores,) = session.run(
            [SCORES_OUTPUT],
            {
                FEATURES_INPUT: km.feature_matrix([body["context_features"]]),
                ACTION_FEATURES_INPUT: candidates,
                CANDIDATE_MASK_INPUT: np.ones((1, len(ids)), np.float32),
            },
        )
        expected = km.softmax_epsilon(scores[0], temperature=0.5, epsilon=0.1)
        assert s["action_kind"] == "parametric" and s["model_version"] == version
        assert s["action"] in ids
        assert s["action_probability"] == pytest.approx(expected[ids.index(s["action"])], abs=1e-6)
        event = logged[s["request_id"]]
        assert event.action_kind is ActionKind.PARAMETRIC
        assert event.possible_actions == ids
        assert event.candidate_features == [c["features"] for c in body["candidates"]]
        assert (event.action, event.action_probability, event.model_version) == (
            s["action"],
            s["action_probability"],
            version,
        )
        assert event.action_vector is None and event.action_log_density is None


def test_continuous_serves_a_sampled_vector_with_its_log_density_and_the_mean(
    config, registry, models, local_stack
):
    """The log density is the tanh-squashed Gaussian's, recomputed from the graph's loc and log std;
    the mean is the graph's action_mean; 300 samples for one context are distributed as claimed
    (their pre-squash values standardise to mean 0, std 1)."""
    model = models["continuous"]
    version = _deploy(registry, model)
    low, high = np.array(km.ACTION_LOW), np.array(km.ACTION_HIGH)
    context = {"f_age": 1.2, "f_clicks": None, "f_hour": -0.4}
    mean, loc, log_std = model.session().run(
        [ACTION_MEAN_OUTPUT, ACTION_LOC_OUTPUT, ACTION_LOG_STD_OUTPUT],
        {FEATURES_INPUT: km.feature_matrix([context])},
    )
    body = {"action_kind": "continuous", "entity_id": "pendulum-1", "context_features": context}
    with TestClient(create_app(config)) as client:
        single = client.post("/v1/act", json=body)
        batch = client.post("/v1/act/batch", json={"requests": [body] * 300})
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    served = [single.json(), *batch.json()["responses"]]
    actions = np.array([s["action"] for s in served])
    assert actions.shape == (301, 2)
    assert ((actions > low) & (actions < high)).all()
    for s in served[:50]:
        assert s["action_kind"] == "continuous" and s["model_version"] == version
        np.testing.assert_allclose(s["action_mean"], mean[0], atol=1e-6)
        reference = km.squashed_gaussian_log_density(np.array(s["action"]), loc[0], log_std[0], low, high)
        assert s["action_log_density"] == pytest.approx(reference, abs=1e-6)
    standardised = (np.arctanh((actions - low) / (high - low) * 2 - 1) - loc[0]) / np.exp(log_std[0])
    assert np.all(np.abs(standardised.mean(axis=0)) < 4.5 / np.sqrt(301)), standardised.mean(axis=0)
    assert np.all(np.abs(standardised.std(axis=0) - 1.0) < 0.15), standardised.std(axis=0)
    first = served[0]
    event = read_decisions(local_stack.bootstrap_servers, config.topics.decisions, {first["request_id"]})[
        first["request_id"]
    ]
    assert event.action_kind is ActionKind.CONTINUOUS
    assert event.possible_actions == km.DIMENSIONS
    assert event.action_vector == first["action"]
    assert event.action_log_density == first["action_log_density"]
    assert event.action is None and event.action_probability is None
    assert (event.model_version, event.mdp_id) == (version, "pendulum-1")


def test_a_request_of_another_kind_is_422_naming_action_kind_and_counted(config, registry, models):
    version = _deploy(registry, models["parametric"])
    discrete = {"entity_id": "u", "possible_actions": ACTIONS}
    continuous = {"action_kind": "continuous", "entity_id": "u"}
    parametric = {
        "action_kind": "parametric",
        "entity_id": "u",
        "candidates": [{"id": "a", "features": {"price": 1.0}}],
    }
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/act", json=discrete)
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert message.startswith("action_kind: the deployed model " + version + " serves parametric actions")
        assert "'discrete'" in message and "candidates=[" in message
        assert client.post("/v1/act", json=continuous).status_code == 422
        batch = client.post("/v1/act/batch", json={"requests": [parametric, continuous]})
        assert batch.status_code == 422 and batch.json()["message"].startswith("requests.1.action_kind:")
        unknown = client.post("/v1/act", json={**continuous, "action_kind": "slate"})
        assert unknown.status_code == 422 and unknown.json()["message"].startswith(
            "action_kind: action_kind must be"
        )
        assert client.post("/v1/act", json=parametric).status_code == 200
        metrics = client.get("/metrics").text
    assert "streamrl_serving_wrong_kind_requests_total 3.0" in metrics


@pytest.mark.parametrize(
    ("candidates", "names"),
    [
        ([{"id": "a"}], ["candidates.0.features", "Field required"]),
        ([{"id": "a", "features": {}}], ["candidates.0.features", "at least one feature"]),
        (
            [{"id": "a", "features": {"price": 1.0}}, {"id": "b", "features": {"size": 2.0}}],
            ["candidates.1.features", "'b'", "none of model", "['price', 'quality']"],
        ),
        (
            [{"id": "a", "features": {"price": 1.0}}, {"id": "a", "features": {"price": 2.0}}],
            ["unique", "'a'"],
        ),
        ([], ["candidates", "at least 1"]),
        ([{"id": "a", "features": {"price": "cheap"}}], ["candidates.0.features.price", "valid number"]),
    ],
)
def test_bad_candidates_are_422_naming_what_was_expected(config, registry, models, candidates, names):
    _deploy(registry, models["parametric"])
    body = {"action_kind": "parametric", "entity_id": "u", "candidates": candidates}
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/act", json=body)
    assert response.status_code == 422, response.text
    for name in names:
        assert name in response.json()["message"], (name, response.json())


def test_openapi_shows_each_kind_request_response_and_error_body(config):
    with TestClient(create_app(config)) as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for kind in ("Discrete", "Parametric", "Continuous"):
        for record in (f"{kind}ActRequest", f"{kind}ActResponse", f"{kind}LoggedDecision"):
            assert record in schemas, record
    assert schemas["ParametricActRequest"]["properties"]["candidates"]["items"] == {
        "$ref": "#/components/schemas/Candidate"
    }
    assert set(schemas["ContinuousActResponse"]["properties"]) >= {
        "action",
        "action_log_density",
        "action_mean",
    }
    for path in ("/v1/act", "/v1/decisions"):
        operation = spec["paths"][path]["post"]
        request = operation["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        assert len(request) == 3
        for status in ("400", "422", "503"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
    act_response = spec["paths"]["/v1/act"]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert act_response["discriminator"]["mapping"] == {
        **{
            kind: f"#/components/schemas/{kind.capitalize()}ActResponse"
            for kind in ("discrete", "parametric", "continuous")
        },
        "not_served": "#/components/schemas/NotServedResponse",  # beside a canary, with no model
    }
