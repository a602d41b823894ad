"""Environment files: defaults load, bad files name the file, key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import DEFAULT_CONFIG, ConfigError, load_config
from infra.environment import Environment


def test_packaged_config_loads_and_composes_stage_configs(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    env = Environment.from_config(config, tmp_path)
    assert env.serving_config().registry_root == tmp_path.resolve() / "registry"
    assert env.stream_config().attribution_window_s == config.stream.attribution_window_s
    assert env.feature_store_config().feature_names == config.feature_store.feature_names
    assert env.monitoring_config().bootstrap_servers == config.stack.bootstrap_servers


def test_wrong_type_names_file_key_value_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  gamma: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "trainer.gamma" in message and "'lots'" in message
    assert "number" in message
    assert info.value.key == "trainer.gamma"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("evaluation:\n  gate:\n    treshold: 1.0\n")
    with pytest.raises(ConfigError, match=r"evaluation\.gate\.treshold.*[Ee]xtra inputs"):
        load_config(path)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stack: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_environment_overrides_stack_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("stack:\n  broker_port: 1111\n")
    monkeypatch.setenv("STREAMRL_BROKER_PORT", "2222")
    assert load_config(path).stack.broker_port == 2222


def test_online_reader_is_selected_in_the_environment_file(tmp_path: Path) -> None:
    path = tmp_path / "reader.yaml"
    path.write_text("feature_store:\n  online_reader: {type: redis}\n")
    env = Environment.from_config(load_config(path), tmp_path)
    assert env.feature_store_config().online_reader.type == "redis"
    assert env.serving_config().feature_store.online_reader.type == "redis"
    path.write_text("feature_store:\n  online_reader: {type: memcached}\n")
    with pytest.raises(ConfigError, match="online_reader"):
        load_config(path)
