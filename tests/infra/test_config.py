"""Environment files: defaults load, bad files name the file, key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import DEFAULT_CONFIG, ConfigError, load_config
from infra.environment import Environment
from trainer import DqnConfig
from trainer.algorithms import TRAIN_FUNCTIONS
from trainer.bandits import LinUcbConfig
from trainer.sac import SacConfig


def test_packaged_config_loads_and_composes_stage_configs(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG, overrides={"feature_store": {"feature_names": ["age", "visits"]}})
    env = Environment.from_config(config, tmp_path)
    assert env.serving_config().registry_root == tmp_path.resolve() / "registry"
    assert env.stream_config().attribution_window_s == config.stream.attribution_window_s
    assert env.feature_store_config().feature_names == ["age", "visits"]
    assert env.monitoring_config().bootstrap_servers == config.stack.bootstrap_servers


def test_the_packaged_config_names_no_app_features(tmp_path: Path) -> None:
    """The environment file is the stack's, not an app's: features come from a manifest (--app)."""
    from infra.environment import MissingSettingError

    env = Environment.from_config(load_config(DEFAULT_CONFIG), tmp_path)
    with pytest.raises(MissingSettingError, match="--app MANIFEST"):
        env.feature_store_config()
    assert env.serving_config().feature_store is None  # serving then reads request features only


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
    path.write_text("feature_store:\n  feature_names: [age]\n  online_reader: {type: redis}\n")
    env = Environment.from_config(load_config(path), tmp_path)
    assert env.feature_store_config().online_reader.type == "redis"
    assert env.serving_config().feature_store.online_reader.type == "redis"
    path.write_text("feature_store:\n  online_reader: {type: memcached}\n")
    with pytest.raises(ConfigError, match="online_reader"):
        load_config(path)


def test_trainer_section_is_any_algorithm_type_and_defaults_to_dqn(tmp_path: Path) -> None:
    packaged = load_config(DEFAULT_CONFIG).trainer
    assert isinstance(packaged, DqnConfig) and packaged.gamma == 0.9  # local.yaml's value
    path = tmp_path / "untyped.yaml"
    path.write_text("trainer:\n  gamma: 0.5\n")  # written before the section became a union
    untyped = load_config(path).trainer
    assert isinstance(untyped, DqnConfig) and untyped.gamma == 0.5
    path.write_text("trainer:\n  type: sac\n  action_low: [-2.0]\n  action_high: [2.0]\n")
    sac = load_config(path).trainer
    assert isinstance(sac, SacConfig) and (sac.action_low, sac.action_high) == ([-2.0], [2.0])
    path.write_text("trainer:\n  type: linucb\n  alpha: 0.25\n")
    linucb = load_config(path).trainer
    assert isinstance(linucb, LinUcbConfig) and linucb.alpha == 0.25


def test_unknown_algorithm_type_names_key_value_and_known_types(tmp_path: Path) -> None:
    path = tmp_path / "ppo.yaml"
    path.write_text("trainer:\n  type: ppo\n  gamma: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.key == "trainer" and str(path) in message and "'ppo'" in message
    for known in TRAIN_FUNCTIONS:
        assert f"'{known}'" in message


def test_an_algorithm_field_error_names_the_key_as_written(tmp_path: Path) -> None:
    path = tmp_path / "cql.yaml"
    path.write_text("trainer:\n  type: cql\n  cql_alpha: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "trainer.cql_alpha" and "greater than or equal to 0" in str(info.value)
    path.write_text("trainer:\n  type: td3\n  action_low: [1.0]\n")  # a continuous type needs both bounds
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "trainer.action_high" and "Field required" in str(info.value)


def test_an_override_that_changes_the_type_replaces_the_section() -> None:
    """local.yaml's dqn keys (double_q, dueling) are no SAC keys: a new `type` starts a fresh section."""
    sac = load_config(
        overrides={"trainer": {"type": "sac", "action_low": [-1.0], "action_high": [1.0], "num_epochs": 3}}
    ).trainer
    assert (
        isinstance(sac, SacConfig)
        and sac.num_epochs == 3
        and sac.gamma == SacConfig.model_fields["gamma"].default
    )
    same = load_config(overrides={"trainer": {"num_epochs": 3}}).trainer  # same type: merged key by key
    assert isinstance(same, DqnConfig) and (same.num_epochs, same.batch_size) == (3, 256)


def test_kafka_section_reaches_every_client_config_and_bad_settings_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "kafka.yaml"
    path.write_text(
        "kafka:\n  protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n  username: app\n"
        "  password_env: APP_KAFKA_PASSWORD\n"
    )
    env = Environment.from_config(load_config(path), tmp_path)
    assert env.serving_config().kafka_security.username == "app"
    assert env.monitoring_config().kafka_security.protocol == "SASL_SSL"
    # On a broker other than the local durable one the decision log stays idempotent.
    assert env.serving_config().decision_log_idempotent is True
    path.write_text("kafka:\n  protocol: SASL_PLAINTEXT\n  username: app\n  password: hunter2\n")
    with pytest.raises(ConfigError, match=r"kafka\.password.*[Ee]xtra inputs"):
        load_config(path)
    path.write_text("kafka:\n  protocol: SASL_PLAINTEXT\n  username: app\n")
    with pytest.raises(ConfigError, match="exactly one of `password_env`"):
        load_config(path)


def test_the_local_durable_broker_gets_an_at_least_once_decision_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMRL_BROKER_STORAGE", "s3")
    env = Environment.from_config(load_config(DEFAULT_CONFIG), tmp_path)
    assert env.serving_config().decision_log_idempotent is False
    path = tmp_path / "chosen.yaml"
    path.write_text("serving:\n  decision_log_idempotent: true\n")
    assert (
        Environment.from_config(load_config(path), tmp_path).serving_config().decision_log_idempotent is True
    )
