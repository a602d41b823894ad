"""Request limits (`ServingConfig.limits`): over-large bodies get 413, too many features or items and
too long strings get 422 naming the field, and a request at every limit is served."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving import create_app
from serving.config import RequestLimits
from tests.serving.conftest import ACTIONS, register_model

LIMITS = RequestLimits(max_body_bytes=2048, max_features=3, max_items=4, max_string_chars=40)


@pytest.fixture
def client(config, registry):
    version = register_model(registry, seed=41)
    registry.deploy(version, reason="test")
    with TestClient(create_app(config.model_copy(update={"limits": LIMITS}))) as client:
        yield client


def _body(**changes: object) -> dict:
    return {"entity_id": "user-1", "context_features": {"f_age": 0.3}, "possible_actions": ACTIONS, **changes}


def _error(response) -> tuple[str, str]:
    body = response.json()
    assert set(body) == {"schema_version", "error", "message", "request_id"}, body
    return body["error"], body["message"]


def test_a_request_at_every_limit_is_served(client) -> None:
    at_limit = _body(
        entity_id="u" * 40,
        context_features={"a" * 40: 1.0, "f_age": 0.3, "f_hour": 2.0},  # 3 features, a 40-char key
        possible_actions=ACTIONS,
    )
    assert len(ACTIONS) <= 4
    response = client.post("/v1/act", json=at_limit)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"entity_id": "u" * 41},
            "entity_id has 41 characters; at most 40 allowed (serving.limits.max_string_chars)",
        ),
        (
            {"context_features": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}},
            "context_features has 4 features; at most 3 allowed (serving.limits.max_features)",
        ),
        (
            {"context_features": {"k" * 41: 1.0}},
            f"context_features key {'k' * 32!r}… has 41 characters; at most 40 allowed",
        ),
        ({"possible_actions": ["a", "b", "c", "d", "e"]}, "possible_actions has 5 items; at most 4 allowed"),
        (
            {"possible_actions": ["email", "p" * 41]},
            "possible_actions.1 has 41 characters; at most 40 allowed",
        ),
        ({"request_id": "r" * 41}, "request_id has 41 characters"),
    ],
)
def test_over_a_limit_is_422_naming_the_field(client, changes: dict, message: str) -> None:
    response = client.post("/v1/act", json=_body(**changes))
    assert response.status_code == 422, response.text
    error, text = _error(response)
    assert error == "RequestLimitError"
    assert text.startswith(message), text


def test_limits_name_the_request_in_a_batch_and_in_logged_decisions(client) -> None:
    batch = {"requests": [_body(), _body(possible_actions=["a", "b", "c", "d", "e"])]}
    response = client.post("/v1/act/batch", json=batch)
    assert response.status_code == 422
    assert _error(response)[1].startswith("requests.1.possible_actions has 5 items"), response.text

    logged = {**_body(policy="rule-" + "x" * 40), "action": "email", "action_probability": 0.5}
    response = client.post("/v1/decisions", json=logged)
    assert response.status_code == 422
    assert _error(response)[1].startswith("policy has 45 characters; at most 40 allowed"), response.text


def test_a_body_over_max_body_bytes_is_413_with_an_error_body(client) -> None:
    padding = {f"f{i}": float(i) for i in range(300)}  # ~3 kB of JSON, over 2,048 bytes
    response = client.post("/v1/act", json=_body(context_features=padding))
    assert response.status_code == 413, response.text
    error, message = _error(response)
    assert error == "RequestTooLarge"
    size = int(response.request.headers["content-length"])
    assert message.startswith(f"the request body has {size} bytes: serving.limits.max_body_bytes allows 2048")
    assert client.get("/healthz").status_code == 200  # and the server goes on


def test_a_chunked_body_over_max_body_bytes_is_413_too(client) -> None:
    def chunks():  # no Content-Length: the limit is found while reading
        yield b'{"entity_id": "user-1", "context_features": {'
        for i in range(300):
            yield f'"f{i}": {i}.0, '.encode()
        yield b'"g": 1.0}, "possible_actions": ["email"]}'

    response = client.post("/v1/act", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert _error(response)[1].startswith(
        "the request body runs past that: serving.limits.max_body_bytes allows"
    )

    def small():  # chunked and within the limit: served as if sent whole
        yield b'{"entity_id": "user-1", '
        yield b'"possible_actions": ["email", "push"]}'

    response = client.post("/v1/act", content=small(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_an_unknown_route_is_404_with_an_error_body(client) -> None:
    response = client.post("/v1/apps/someone-else/act", json=_body())
    assert response.status_code == 404
    response = client.get("/v1/nowhere")
    assert response.status_code == 404
    assert _error(response)[0] == "NotFound"


def test_limits_are_set_in_the_environment_file_and_bad_ones_are_named(tmp_path) -> None:
    """`serving.limits` in an environment file reaches `ServingConfig` (what `streamrl serve`/`up` run)."""
    import json

    from infra.config import ConfigError, load_config
    from infra.environment import Environment

    path = tmp_path / "env.yaml"
    path.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "serving": {"limits": {"max_items": 9}}}))
    limits = Environment.from_config(load_config(path)).serving_config().limits
    assert (limits.max_items, limits.max_features, limits.max_body_bytes) == (9, 512, 1_048_576)

    path.write_text(
        json.dumps({"run_dir": str(tmp_path / "run"), "serving": {"limits": {"max_string_chars": 8}}})
    )
    with pytest.raises(ConfigError, match=r"serving\.limits\.max_string_chars.*greater than or equal to 36"):
        load_config(path)
