"""Registry: versions, sha256 + load verification, atomic deploy pointer, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_timelines import BANDIT_ACTIONS, fit_spec, make_bandit_timelines

from contracts import ActionKind
from trainer import (
    CorruptModelError,
    ModelRegistry,
    QNetwork,
    RegistryError,
    SoftmaxExploration,
    export_model,
)


@pytest.fixture(scope="module")
def onnx_models() -> list[bytes]:
    spec = fit_spec(make_bandit_timelines(50, seed=8))
    return [export_model(QNetwork(spec, 3, [8], dueling=True).eval(), 1.0, seed=i) for i in range(3)]


def _register(registry: ModelRegistry, onnx_bytes: bytes):
    return registry.register(
        onnx_bytes,
        feature_names=["x1", "x2"],
        actions=BANDIT_ACTIONS,
        algorithm="dqn",
        exploration=SoftmaxExploration(temperature=0.5),
        training_metrics={"train/td_loss": 0.1},
    )


def test_register_get_deploy_rollback(tmp_path: Path, onnx_models: list[bytes]) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.deployed() is None and registry.list_versions() == []

    metas = [_register(registry, b) for b in onnx_models]
    again = _register(registry, onnx_models[0])  # same bytes: still a new, unique version

    versions = [m.version for m in [*metas, again]]
    assert versions[0].startswith("m0001-") and versions[3].startswith("m0004-")
    assert registry.list_versions() == versions == sorted(versions)
    assert versions[3].split("-")[1] == versions[0].split("-")[1]  # hash part names the content
    path, meta = registry.get(versions[1])
    assert path == tmp_path / "registry" / "models" / versions[1] / "model.onnx"
    assert meta == metas[1] and meta.exploration == SoftmaxExploration(temperature=0.5)

    for version in versions[:3]:
        registry.deploy(version, reason=f"gate passed for {version}")
    assert registry.deployed() == versions[2]
    assert registry.rollback("bad canary") == versions[1]
    assert registry.rollback("still bad") == versions[0]
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("no more")
    assert registry.deployed() == versions[0]

    pointer = json.loads((tmp_path / "registry" / "deployed.json").read_text())
    assert pointer["schema_version"] == 1 and pointer["current"] == versions[0]
    assert [(e["kind"], e["version"]) for e in pointer["history"]] == [
        ("deploy", versions[0]),
        ("deploy", versions[1]),
        ("deploy", versions[2]),
        ("rollback", versions[1]),
        ("rollback", versions[0]),
    ]
    assert (
        pointer["history"][3]["reason"] == "bad canary" and pointer["history"][3]["previous"] == versions[2]
    )
    assert not list((tmp_path / "registry").glob(".*.tmp"))


def test_corrupt_model_is_refused_and_pointer_unchanged(tmp_path: Path, onnx_models: list[bytes]) -> None:
    registry = ModelRegistry(tmp_path)
    good, victim = _register(registry, onnx_models[0]), _register(registry, onnx_models[1])
    registry.deploy(good.version, reason="first")
    pointer_before = (tmp_path / "deployed.json").read_bytes()

    model_file = tmp_path / "models" / victim.version / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))

    with pytest.raises(CorruptModelError, match="sha256") as caught:
        registry.get(victim.version)
    assert caught.value.version == victim.version
    with pytest.raises(CorruptModelError):
        registry.deploy(victim.version, reason="should not happen")
    assert (tmp_path / "deployed.json").read_bytes() == pointer_before
    assert registry.deployed() == good.version
    registry.get(good.version)  # the other model is untouched


def test_unloadable_onnx_and_unknown_version_are_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(CorruptModelError, match="onnxruntime cannot load"):
        _register(registry, b"not an onnx graph")
    assert registry.list_versions() == []
    with pytest.raises(RegistryError, match="m0099-deadbeef"):
        registry.deploy("m0099-deadbeef", reason="typo")
    assert registry.deployed() is None


def test_register_records_the_action_kind(tmp_path: Path, onnx_models: list[bytes]) -> None:
    """Given explicitly it is stored as given; left out, it follows from the graph's names (discrete here)."""
    registry = ModelRegistry(tmp_path)
    inferred = _register(registry, onnx_models[0])
    declared = registry.register(
        onnx_models[1],
        feature_names=["x1", "x2"],
        actions=BANDIT_ACTIONS,
        algorithm="dqn",
        action_kind="parametric",
    )

    assert inferred.action_kind is ActionKind.DISCRETE
    assert declared.action_kind is ActionKind.PARAMETRIC
    on_disk = json.loads((tmp_path / "models" / declared.version / "metadata.json").read_text())
    assert on_disk["action_kind"] == "parametric"
    assert registry.metadata(declared.version).action_kind is ActionKind.PARAMETRIC
    with pytest.raises(
        RegistryError, match=r"\(kind parametric\) is a 'dqn' model, whose models choose discrete"
    ):
        registry.deploy(declared.version, reason="the kind does not fit")
    assert registry.deployed() is None


def test_canary_lifecycle_in_the_deploy_pointer(tmp_path: Path, onnx_models: list[bytes]) -> None:
    """A canary sits beside the current version in deployed.json; promoting deploys it, a deploy of
    another version or a rollback ends it, and canary events never count as deploys for rollback."""
    registry = ModelRegistry(tmp_path)
    a, b, c = (_register(registry, onnx).version for onnx in onnx_models)
    registry.start_canary(b, 0.25, "cannot judge")  # beside nothing deployed: the day-0 fallback
    state = registry.deployment_state()
    assert state.current is None and state.canary.version == b and state.canary.baseline is None
    on_disk = json.loads((tmp_path / "deployed.json").read_text())
    assert on_disk["canary"]["version"] == b and on_disk["canary"]["share"] == 0.25

    registry.deploy(a, "first")  # another version deployed: the canary ends
    state = registry.deployment_state()
    assert (state.current, state.canary) == (a, None)
    assert [e.kind.value for e in state.history] == ["canary_start", "canary_stop", "deploy"]

    registry.start_canary(b, 0.5, "again")
    registry.start_canary(c, 0.5, "a newer candidate")  # replaces the running one
    assert registry.canary().version == c and registry.canary().baseline == a
    registry.end_canary(promote=True, reason="better")
    state = registry.deployment_state()
    assert (state.current, state.canary) == (c, None)
    assert state.deploy_stack() == [a, c]  # canary events are not deploys
    assert registry.rollback("back") == a

    with pytest.raises(RegistryError, match="already deployed"):
        registry.start_canary(a, 0.5, "same as current")
    with pytest.raises(RegistryError, match="no canary is running"):
        registry.end_canary(promote=False, reason="none")
    with pytest.raises(ValueError):
        registry.start_canary(b, 1.5, "share out of range")
    assert registry.canary() is None and registry.deployed() == a


def test_a_canary_of_another_kind_is_refused(tmp_path: Path, onnx_models: list[bytes]) -> None:
    registry = ModelRegistry(tmp_path)
    registry.deploy(_register(registry, onnx_models[0]).version, "discrete")
    parametric = registry.register(
        onnx_models[1],
        feature_names=["x1", "x2"],
        actions=BANDIT_ACTIONS,
        algorithm="parametric_dqn",
        action_kind="parametric",
    )
    with pytest.raises(RegistryError):
        registry.start_canary(parametric.version, 0.5, "wrong kind")
    assert registry.canary() is None
