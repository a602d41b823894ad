"""Bearer tokens with scopes (`serving.auth`) and the admin routes, on a real registry and broker:
401 without a valid token, 403 without the scope, each an ErrorBody; tokens never echoed or logged."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from serving import create_app
from serving._auth import AuthConfigError, required_scope
from serving.config import AuthConfig
from tests.serving.conftest import ACTIONS, register_model

ACT_TOKEN = "act-secret-0123456789"
ADMIN_TOKEN = "admin-secret-0123456789"
TOKENS = {
    "app-x": {"token": ACT_TOKEN, "scopes": ["act"]},
    "ops": {"token": ADMIN_TOKEN, "scopes": ["act", "admin"]},
}
BODY = {"entity_id": "user-1", "context_features": {"f_age": 0.3}, "possible_actions": ACTIONS}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def two_versions(registry) -> tuple[str, str]:
    first, second = register_model(registry, seed=51), register_model(registry, seed=52)
    registry.deploy(first, reason="first")
    registry.deploy(second, reason="second")
    return first, second


@pytest.fixture
def secured(config, two_versions, monkeypatch):
    monkeypatch.setenv("TEST_SERVING_TOKENS", json.dumps(TOKENS))
    auth = AuthConfig(enabled=True, tokens_env="TEST_SERVING_TOKENS")
    with TestClient(create_app(config.model_copy(update={"auth": auth}))) as client:
        yield client


def _error(response) -> tuple[str, str]:
    body = response.json()
    assert set(body) == {"schema_version", "error", "message", "request_id"}, body
    return body["error"], body["message"]


def test_routes_need_the_scope_the_table_gives() -> None:
    assert required_scope("/v1/act") == required_scope("/v1/act/batch") == "act"
    assert required_scope("/v1/decisions") == required_scope("/v1/apps/shop/decisions/batch") == "act"
    assert required_scope("/v1/admin/deploy") == required_scope("/v1/apps/shop/admin/rollback") == "admin"
    assert required_scope("/healthz") is required_scope("/metrics") is required_scope("/v1/healthz") is None


def test_no_or_a_wrong_token_is_401_and_a_missing_scope_403(secured, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for headers in ({}, _bearer("not-a-token-at-all"), {"Authorization": f"Basic {ACT_TOKEN}"}):
        response = secured.post("/v1/act", json=BODY, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        error, message = _error(response)
        assert error == "Unauthorized" and "scope 'act'" in message

    assert secured.post("/v1/act", json=BODY, headers=_bearer(ACT_TOKEN)).status_code == 200
    refused = secured.post("/v1/admin/rollback", json={}, headers=_bearer(ACT_TOKEN))
    assert refused.status_code == 403
    error, message = _error(refused)
    assert error == "Forbidden"
    assert message == "token 'app-x' has scopes ['act'], but this route needs 'admin'"
    # probes and scrapers stay open
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/metrics").status_code == 200
    # the tokens are in no answer and no log line
    for token in (ACT_TOKEN, ADMIN_TOKEN):
        assert token not in caplog.text and token not in refused.text


def test_an_admin_rolls_back_and_deploys_and_serving_follows_at_once(secured, registry, two_versions) -> None:
    first, second = two_versions
    assert secured.get("/healthz").json()["model_version"] == second

    rolled = secured.post("/v1/admin/rollback", json={"reason": "bad day"}, headers=_bearer(ADMIN_TOKEN))
    assert rolled.status_code == 200, rolled.text
    assert rolled.json() == {"deployed": first, "previous": second, "served_here": first}
    assert registry.deployed() == first
    assert registry.deployment_state().history[-1].reason == "bad day (by ops)"
    assert secured.get("/healthz").json()["model_version"] == first
    assert secured.post("/v1/act", json=BODY, headers=_bearer(ACT_TOKEN)).json()["model_version"] == first

    deployed = secured.post("/v1/admin/deploy", json={"version": second}, headers=_bearer(ADMIN_TOKEN))
    assert deployed.status_code == 200 and deployed.json()["served_here"] == second
    assert registry.deployment_state().history[-1].reason == "deployed through serving's admin route (by ops)"

    unknown = secured.post("/v1/admin/deploy", json={"version": "m9999-nope"}, headers=_bearer(ADMIN_TOKEN))
    assert unknown.status_code == 409
    error, message = _error(unknown)
    assert error == "AdminError" and message.startswith("deploy refused: ") and "m9999-nope" in message
    assert registry.deployed() == second


def test_without_authentication_the_admin_routes_are_open(config, two_versions) -> None:
    first, _ = two_versions
    with TestClient(create_app(config)) as client:
        assert client.post("/v1/admin/rollback", json={}).json()["served_here"] == first


def test_a_bad_token_source_stops_the_server_before_it_listens(config, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("STREAMRL_SERVING_TOKENS", raising=False)
    with pytest.raises(AuthConfigError, match="environment variable STREAMRL_SERVING_TOKENS is not set"):
        create_app(config.model_copy(update={"auth": AuthConfig(enabled=True)}))

    secret_file = tmp_path / "tokens.json"
    secret_file.write_text('{"app-x": {"token": "short-secret", "scopes": ["act"]}}')
    with pytest.raises(AuthConfigError) as short:
        create_app(config.model_copy(update={"auth": AuthConfig(enabled=True, tokens_file=secret_file)}))
    assert "app-x.token: String should have at least 16 characters" in str(short.value)
    assert "short-secret" not in str(short.value)

    secret_file.write_text('{"app-x": {"token": "unterminated-secret-token')
    with pytest.raises(AuthConfigError, match="not valid JSON") as broken:
        create_app(config.model_copy(update={"auth": AuthConfig(enabled=True, tokens_file=secret_file)}))
    assert "unterminated-secret-token" not in str(broken.value)


def test_tokens_in_a_file_rotate_without_a_restart(
    config, two_versions, tmp_path, monkeypatch, caplog
) -> None:
    """Add the new token, move clients, drop the old one: each step takes effect within
    RELOAD_CHECK_S; a broken file keeps the tokens in force (never an open door)."""
    monkeypatch.setattr("serving._auth.RELOAD_CHECK_S", 0.0)
    new_token = "rotated-secret-9876543210"
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    auth = AuthConfig(enabled=True, tokens_file=tokens_file)
    with TestClient(create_app(config.model_copy(update={"auth": auth}))) as client:

        def status(token: str) -> int:
            return client.post("/v1/act", json=BODY, headers=_bearer(token)).status_code

        assert (status(ACT_TOKEN), status(new_token)) == (200, 401)
        tokens_file.write_text(json.dumps({**TOKENS, "app-x-next": {"token": new_token, "scopes": ["act"]}}))
        assert (status(ACT_TOKEN), status(new_token)) == (200, 200)
        tokens_file.write_text(json.dumps({"app-x-next": {"token": new_token, "scopes": ["act"]}}))
        assert (status(ACT_TOKEN), status(new_token)) == (401, 200)
        tokens_file.write_text('{"app-x-next": {"token": "short", "scopes": ["act"]}')  # not JSON
        assert (status(ACT_TOKEN), status(new_token)) == (401, 200)
        assert "does not hold valid tokens: not valid JSON" in caplog.text
        assert "tokens read before stay in force" in caplog.text
        assert new_token not in caplog.text and "short" not in caplog.text
