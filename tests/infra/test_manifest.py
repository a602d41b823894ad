"""App manifests: validation with precise errors, `streamrl init`, and each app's namespaced environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contracts import ActionKind, RewardEvent, reward_value
from infra.cli import main
from infra.commands import init as init_command
from infra.config import load_config
from infra.environment import Environment
from infra.manifest import AppManifest, ManifestError, check_distinct, load_manifest

MINIMAL = {
    "schema_version": 1,
    "app": "shop",
    "features": [{"name": "visits"}, {"name": "age", "type": "continuous"}],
    "actions": {"kind": "discrete", "names": ["a", "b"]},
    "trainer": {"type": "dqn"},
}


def write(tmp_path: Path, data: dict, name: str = "manifest.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        ({"app": "Shop!"}, "app", "should match pattern"),
        ({"actions": {"kind": "discrete", "names": ["a", "a"]}}, "actions.names", "duplicated: ['a']"),
        ({"actions": {"kind": "slate", "names": ["a"]}}, "actions", "'discrete', 'parametric', 'continuous'"),
        ({"trainer": {"type": "sac"}}, "trainer", "learns continuous actions but actions.kind is 'discrete'"),
        ({"trainer": {"type": "dqn", "gama": 0.9}}, "trainer.gama", "Extra inputs"),
        ({"refresh": {"daily_at_utc": "25:00"}}, "refresh.daily_at_utc", "HH:MM"),
        ({"refresh": {"daily_at_utc": None}}, "refresh", "never refreshes"),
        ({"candidates": [{"learning_rate": -1}]}, "<root>", "candidates[0].learning_rate"),
        ({"candidates": [{"type": "cql"}]}, "<root>", "varies the knobs of 'dqn' only"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
        ({"gate": {"canary": {"share": 1.5}}}, "gate.canary.share", "less than 1"),
    ],
)
def test_a_bad_manifest_names_file_key_value_and_reason(
    tmp_path: Path, change: dict, key: str, expected: str
) -> None:
    path = write(tmp_path, {**MINIMAL, **change})
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.key == key
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)


def test_schema_version_is_required(tmp_path: Path) -> None:
    data = dict(MINIMAL)
    del data["schema_version"]
    with pytest.raises(ManifestError, match="schema_version: 1"):
        load_manifest(write(tmp_path, data))


def test_parametric_names_must_not_be_both_context_and_candidate_features(tmp_path: Path) -> None:
    data = {
        **MINIMAL,
        "actions": {"kind": "parametric", "candidate_features": ["price", "age"]},
        "trainer": {"type": "parametric_dqn"},
    }
    with pytest.raises(ManifestError, match=r"\['age'\] are both context features and candidate_features"):
        load_manifest(write(tmp_path, data))


def test_continuous_bounds_come_from_the_action_space_once(tmp_path: Path) -> None:
    actions = {"kind": "continuous", "dimensions": [{"name": "bid", "low": 0, "high": 5}]}
    manifest = load_manifest(write(tmp_path, {**MINIMAL, "actions": actions, "trainer": {"type": "td3"}}))
    assert (manifest.trainer.action_low, manifest.trainer.action_high) == ([0.0], [5.0])
    clash = {**MINIMAL, "actions": actions, "trainer": {"type": "td3", "action_high": [4.0]}}
    with pytest.raises(ManifestError, match=r"action_high \[4.0\] contradicts"):
        load_manifest(write(tmp_path, clash, "clash.yaml"))


def test_two_apps_may_not_share_a_name_or_a_port(tmp_path: Path) -> None:
    one = AppManifest.model_validate({**MINIMAL, "serving": {"port": 18100}})
    other = AppManifest.model_validate({**MINIMAL, "app": "news", "serving": {"port": 18100}})
    with pytest.raises(ManifestError, match="already used by"):
        check_distinct([(tmp_path / "a.yaml", one), (tmp_path / "b.yaml", one)])
    with pytest.raises(ManifestError, match="serving.port"):
        check_distinct([(tmp_path / "a.yaml", one), (tmp_path / "b.yaml", other)])


def test_contract_changes_are_listed_and_safe_changes_are_not() -> None:
    running = AppManifest.model_validate(MINIMAL)
    retuned = AppManifest.model_validate({**MINIMAL, "trainer": {"type": "dqn", "learning_rate": 0.01}})
    assert retuned.incompatible_change(running) == []
    renamed = AppManifest.model_validate({**MINIMAL, "actions": {"kind": "discrete", "names": ["a", "c"]}})
    retyped = AppManifest.model_validate({**MINIMAL, "features": [{"name": "visits", "type": "binary"}]})
    assert len(renamed.incompatible_change(running)) == 1
    assert retyped.incompatible_change(running) == [
        "feature 'age' removed",
        "feature 'visits' type: None -> binary",
    ]


def test_candidate_grid_overrides_the_trainer() -> None:
    manifest = AppManifest.model_validate(
        {**MINIMAL, "candidates": [{"learning_rate": 0.01}, {"learning_rate": 0.001, "gamma": 0.5}]}
    )
    configs = manifest.candidate_configs()
    assert [(c.learning_rate, c.gamma) for c in configs] == [(0.01, manifest.trainer.gamma), (0.001, 0.5)]


def test_the_app_environment_is_namespaced_and_carries_the_manifest(tmp_path: Path) -> None:
    base = load_config(overrides={"apps_dir": str(tmp_path / "apps")})
    manifest = AppManifest.model_validate(
        {
            **MINIMAL,
            "reward": {
                "metrics": {"click": 1.0, "sent": -0.1},
                "attribution_window_s": 30,
                "max_mdp_length": 9,
            },
            "gate": {
                "problem": "one_step",
                "headline": "sndr",
                "threshold": 1.02,
                "min_rows": 300,
                "canary": {"share": 0.2, "min_episodes": 30},
            },
            "serving": {"port": 18111},
        }
    )
    env = Environment.for_app(base, manifest)
    assert env.run_dir == (tmp_path / "apps" / "shop").resolve()
    assert (
        env.config.topics.decisions == "shop.decisions"
        and env.config.topics.dead_letters == "shop.dead_letters"
    )
    stream = env.stream_config()
    assert stream.output_dir == env.run_dir / "timelines"
    assert (stream.attribution_window_s, stream.max_mdp_length) == (30, 9)
    assert stream.reward_metrics == {"click": 1.0, "sent": -0.1}
    store = env.feature_store_config()
    assert (store.project, store.feature_view, store.feature_names) == (
        "shop",
        "shop_context",
        ["visits", "age"],
    )
    serving = env.serving_config()
    assert (serving.app, serving.port, serving.action_kind) == ("shop", 18111, ActionKind.DISCRETE)
    assert serving.fallback.type == "uniform"
    assert env.config.evaluation.headline == "sndr" and env.config.evaluation.gate.threshold == 1.02
    canary = env.config.evaluation.gate.canary
    assert (canary.share, canary.min_episodes, canary.confidence) == (0.2, 30, 0.95)
    assert env.config.normalization.override("age").feature_type.value == "continuous"
    assert env.monitoring_config().app_id == "streamrl-monitor-shop"


def test_reward_from_metrics_is_the_weighted_sum() -> None:
    event = RewardEvent.model_validate(
        {"request_id": "r", "timestamp": "2026-01-01T00:00:00Z", "metrics": {"click": 1.0, "sent": 1.0}}
    )
    assert reward_value(event, {"click": 1.0, "sent": -0.1, "buy": 5.0}) == pytest.approx(0.9)
    assert reward_value(event, None) is None  # no `reward` and no definition: dead-lettered
    with pytest.raises(ValueError, match="needs `reward` or at least one entry in `metrics`"):
        RewardEvent.model_validate({"request_id": "r", "timestamp": "2026-01-01T00:00:00Z"})


@pytest.mark.parametrize("kind", ["discrete", "parametric", "continuous"])
def test_init_writes_a_manifest_that_validates(tmp_path: Path, kind: str, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "checkout_offers", "--kind", kind]) == 0
    manifest = load_manifest(tmp_path / "checkout_offers" / "manifest.yaml")
    assert manifest.app == "checkout_offers" and manifest.actions.kind == kind
    assert main(["init", "checkout_offers", "--kind", kind]) == 1  # never overwrites by surprise
    assert "exists; pass --force" in capsys.readouterr().out


def test_init_refuses_a_bad_name(tmp_path: Path, capsys) -> None:
    assert main(["init", "Bad-Name", "--output", str(tmp_path / "m.yaml")]) == 2
    assert "must match" in capsys.readouterr().out
    assert init_command.render("x", "discrete", Path("x.yaml")).count("schema_version: 1") == 1


def test_a_running_app_refuses_a_contract_change_unless_acknowledged(tmp_path: Path) -> None:
    from infra.apps import MANIFEST_FILE, app_dir, check_change, resolve_app

    config = load_config(overrides={"apps_dir": str(tmp_path / "apps")})
    recorded = app_dir(config, "shop") / MANIFEST_FILE
    recorded.parent.mkdir(parents=True)
    recorded.write_text(yaml.safe_dump(MINIMAL))  # what `up` recorded for the running app
    assert resolve_app("shop", config) == AppManifest.model_validate(MINIMAL)  # --app NAME finds it
    changed = AppManifest.model_validate(
        {**MINIMAL, "actions": {"kind": "discrete", "names": ["a", "b", "c"]}}
    )
    path = tmp_path / "new.yaml"
    with pytest.raises(ManifestError, match="--acknowledge-change") as info:
        check_change(config, changed, path, acknowledged=False)
    assert info.value.key == "actions" and "['a', 'b'] -> " not in str(info.value)
    assert "'names': ['a', 'b', 'c']" in str(info.value)
    check_change(config, changed, path, acknowledged=True)  # acknowledged: allowed
    check_change(config, AppManifest.model_validate({**MINIMAL, "gate": {"threshold": 1.1}}), path, False)
    with pytest.raises(Exception, match="no app 'news'"):
        resolve_app("news", config)


def test_up_refuses_a_bad_manifest_before_starting_anything(tmp_path: Path, capsys) -> None:
    good = write(tmp_path, {**MINIMAL, "app": "news"}, "good.yaml")
    bad = write(tmp_path, {**MINIMAL, "reward": {"metrics": {"click": "lots"}}}, "bad.yaml")
    environment = tmp_path / "environment.yaml"
    environment.write_text(
        yaml.safe_dump({"apps_dir": str(tmp_path / "apps"), "stack": {"state_dir": str(tmp_path / "stack")}})
    )
    assert main(["up", str(good), str(bad), "--config", str(environment)]) == 1
    error = capsys.readouterr().err
    assert f"{bad}: key 'reward.metrics.click' has value 'lots'" in error
    assert not (tmp_path / "stack").exists() and not (tmp_path / "apps").exists()  # nothing started
