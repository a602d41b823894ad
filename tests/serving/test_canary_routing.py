"""Serving follows the registry's canary: each episode (`mdp_id`) goes to the canary for its share,
else to the deployed model or the day-0 fallback; ending, promoting and a corrupt canary.

The holder is reloaded by hand after each move of the pointer (its poller may get there first:
either way the state is followed once the call returns)."""

from __future__ import annotations

import hashlib
import math
import random
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from serving import ServingConfig, create_app
from serving.config import UniformFallbackConfig
from serving.model_holder import ModelHolder
from tests.serving._kafka import read_decisions
from tests.serving.conftest import ACTIONS, register_model
from trainer.registry import CanaryState, DeploymentEvent, DeploymentKind, ModelRegistry

N_EPISODES = 400
MDP_IDS = [f"episode-{i}" for i in range(N_EPISODES)]


@pytest.fixture
def config(config: ServingConfig) -> ServingConfig:
    """The shared serving config, with room for every episode in one batch."""
    return config.model_copy(update={"max_batch": N_EPISODES})


def _canary_takes(mdp_id: str, share: float) -> bool:
    """The routing rule, written out again here: the first 8 bytes of BLAKE2b as a fraction of 2⁶⁴."""
    digest = hashlib.blake2b(mdp_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def _holder(client: TestClient) -> ModelHolder:
    return client.app.state.runtime.holder


def _serve(client: TestClient, mdp_ids: list[str]) -> dict[str, str]:
    """One batch, one request per episode: the model version that answered each episode."""
    requests = [{"entity_id": "u", "mdp_id": m, "possible_actions": ACTIONS} for m in mdp_ids]
    response = client.post("/v1/act/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    responses = response.json()["responses"]
    assert [r["mdp_id"] for r in responses] == mdp_ids, "responses come back in request order"
    return {r["mdp_id"]: r["model_version"] for r in responses}


def _metric(client: TestClient, name: str) -> float:
    (line,) = [line for line in client.get("/metrics").text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_canary_serves_the_episodes_its_hash_gives_it(config, registry, local_stack):
    deployed, candidate = register_model(registry, seed=40), register_model(registry, seed=41)
    registry.deploy(deployed, reason="first")
    registry.start_canary(candidate, share=0.5, reason="judge online")
    expected = {m for m in MDP_IDS if _canary_takes(m, 0.5)}
    with TestClient(create_app(config)) as client:
        _holder(client).reload()
        assert client.get("/healthz").json()["canary"] == {"model_version": candidate, "share": 0.5}
        served = _serve(client, MDP_IDS)
        assert set(served.values()) == {deployed, candidate}
        assert {m for m, version in served.items() if version == candidate} == expected
        # A binomial(400, 0.5) count: within 4 standard deviations (10) of 200.
        assert abs(len(expected) - N_EPISODES / 2) <= 4 * math.sqrt(N_EPISODES * 0.5 * 0.5), len(expected)
        # The same episodes again, in another order, and one by one: each stays on its model.
        shuffled = random.Random(0).sample(MDP_IDS, k=N_EPISODES)
        assert _serve(client, shuffled) == served
        for mdp_id in MDP_IDS[:20]:
            body = {"entity_id": "someone-else", "mdp_id": mdp_id, "possible_actions": ACTIONS}
            assert client.post("/v1/act", json=body).json()["model_version"] == served[mdp_id]
        # Without an mdp_id the entity is the episode.
        alone = client.post("/v1/act", json={"entity_id": MDP_IDS[0], "possible_actions": ACTIONS})
        assert alone.json()["model_version"] == served[MDP_IDS[0]]
        singles = sum(served[m] == candidate for m in MDP_IDS[:20]) + (served[MDP_IDS[0]] == candidate)
        assert _metric(client, "streamrl_serving_canary_decisions_total") == 2 * len(expected) + singles
        # Logged under the version that decided: what judges the canary later.
        sent = {
            version: client.post(
                "/v1/act", json={"entity_id": "u", "mdp_id": mdp_id, "possible_actions": ACTIONS}
            ).json()["request_id"]
            for version, mdp_id in ((deployed, min(set(MDP_IDS) - expected)), (candidate, min(expected)))
        }
    logged = read_decisions(local_stack.bootstrap_servers, config.topics.decisions, set(sent.values()))
    assert {version: logged[request_id].model_version for version, request_id in sent.items()} == {
        deployed: deployed,
        candidate: candidate,
    }


def test_canary_beside_the_day0_fallback(config, registry):
    candidate = register_model(registry, seed=42)
    registry.start_canary(candidate, share=0.3, reason="first model, judged online")
    day0 = config.model_copy(update={"fallback": UniformFallbackConfig()})
    with TestClient(create_app(day0)) as client:
        _holder(client).reload()
        health = client.get("/healthz").json()
        assert health["model_version"] == "day0-uniform" and health["status"] == "ok"
        assert health["canary"] == {"model_version": candidate, "share": 0.3}
        served = _serve(client, MDP_IDS)
    assert set(served.values()) == {"day0-uniform", candidate}
    assert {m for m, version in served.items() if version == candidate} == {
        m for m in MDP_IDS if _canary_takes(m, 0.3)
    }


def test_canary_beside_the_apps_own_policy_leaves_it_the_other_episodes(config, registry):
    """No model deployed and no fallback (`day0: none`): the app decides by its own policy. A canary
    then serves its share; every other episode is answered `not_served`, for the app to decide."""
    candidate = register_model(registry, seed=45)
    registry.start_canary(candidate, share=0.4, reason="first model, beside the app's rule")
    requests = [{"entity_id": "u", "mdp_id": m, "possible_actions": ACTIONS} for m in MDP_IDS]
    taken = {m for m in MDP_IDS if _canary_takes(m, 0.4)}
    with TestClient(create_app(config)) as client:
        _holder(client).reload()
        health = client.get("/healthz").json()
        assert health["model_version"] is None and health["status"] == "ok"
        assert health["canary"] == {"model_version": candidate, "share": 0.4}
        answers = client.post("/v1/act/batch", json={"requests": requests}).json()["responses"]
        assert [a["mdp_id"] for a in answers] == MDP_IDS
        served = {a["mdp_id"] for a in answers if a["action_kind"] == "discrete"}
        assert served == taken
        assert all(
            a["model_version"] == candidate and a["action"] in ACTIONS
            for a in answers
            if a["mdp_id"] in taken
        )
        others = [a for a in answers if a["mdp_id"] not in taken]
        assert {a["action_kind"] for a in others} == {"not_served"}
        assert all("decide by your own policy" in a["reason"] and "action" not in a for a in others)
        one = client.post(
            "/v1/act",
            json={"entity_id": "u", "mdp_id": min(set(MDP_IDS) - taken), "possible_actions": ACTIONS},
        )
        assert one.status_code == 200 and one.json()["action_kind"] == "not_served"
        assert _metric(client, "streamrl_serving_not_served_total") == len(others) + 1
        assert _metric(client, "streamrl_serving_canary_decisions_total") == len(taken)
        # The canary ends: nothing serves, as before it started.
        registry.end_canary(promote=False, reason="worse than the rule")
        _holder(client).reload()
        assert client.post("/v1/act/batch", json={"requests": requests[:5]}).status_code == 503
        assert client.get("/healthz").json()["status"] == "unavailable"


def test_ending_the_canary_serves_the_deployed_model_and_promoting_serves_the_canary(config, registry):
    deployed, candidate = register_model(registry, seed=43), register_model(registry, seed=44)
    registry.deploy(deployed, reason="first")
    registry.start_canary(candidate, share=0.5, reason="judge online")
    with TestClient(create_app(config)) as client:
        holder = _holder(client)
        holder.reload()
        assert set(_serve(client, MDP_IDS).values()) == {deployed, candidate}

        registry.end_canary(promote=False, reason="worse online")
        holder.reload()
        assert set(_serve(client, MDP_IDS).values()) == {deployed}
        assert holder.canary() is None and client.get("/healthz").json()["canary"] is None

        registry.start_canary(candidate, share=0.5, reason="second look")
        holder.reload()
        canary = holder.canary()
        assert canary is not None and canary.model.version == candidate
        registry.end_canary(promote=True, reason="better online")
        holder.reload()
        assert set(_serve(client, MDP_IDS).values()) == {candidate}
        assert holder.current() is canary.model, "the promoted canary is served as loaded"
        health = client.get("/healthz").json()
        assert health["model_version"] == candidate and health["canary"] is None
        assert health["status"] == "ok"


def _start_canary_by_hand(registry: ModelRegistry, version: str, share: float) -> None:
    """Move the pointer to a canary the registry would refuse (a corrupt file), as a bad copy would."""
    state = registry.deployment_state()
    now = datetime.now(UTC)
    event = DeploymentEvent(
        kind=DeploymentKind.CANARY_START, version=version, previous=state.current, at=now, reason="x"
    )
    canary = CanaryState(version=version, share=share, baseline=state.current, started_at=now, reason="x")
    registry.pointer_path.write_text(
        state.model_copy(update={"canary": canary, "history": [*state.history, event]}).model_dump_json()
    )


def test_a_canary_that_does_not_load_leaves_the_deployed_model_alone(config, registry):
    deployed, broken = register_model(registry, seed=45), register_model(registry, seed=46)
    registry.deploy(deployed, reason="first")
    model_file = registry.models_dir / broken / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:100] + b"garbage")
    _start_canary_by_hand(registry, broken, share=0.5)
    with TestClient(create_app(config)) as client:
        holder = _holder(client)
        holder.reload()
        holder.reload()  # the same broken canary is counted once, not per poll
        assert holder.canary() is None
        assert set(_serve(client, MDP_IDS).values()) == {deployed}
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and health["model_version"] == deployed
        assert health["canary"] is None
        (reason,) = health["degraded_reasons"]
        assert reason.startswith(f"canary model {broken!r} could not be loaded") and "sha256" in reason, (
            reason
        )
        assert reason.endswith(f"serving {deployed} alone"), reason
        assert _metric(client, "streamrl_serving_model_swap_failures_total") == 1
        assert _metric(client, "streamrl_serving_canary_decisions_total") == 0

        registry.end_canary(promote=False, reason="broken")
        holder.reload()
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["degraded_reasons"] == []
