"""The environment file's `serving:` and `monitoring:` sections reach their stages' configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts import ActionKind
from infra.config import ConfigError, load_config
from infra.environment import Environment
from serving.config import NoFallbackConfig, UniformFallbackConfig

CONTINUOUS_DAY0 = """\
serving:
  port: 18181
  fallback: {type: uniform, model_version: pendulum-day0}
  action_kind: continuous
  continuous_actions:
    - {name: torque, low: -2.0, high: 2.0}
"""


def test_day0_keys_reach_the_serving_config(tmp_path: Path) -> None:
    path = tmp_path / "pendulum.yaml"
    path.write_text(CONTINUOUS_DAY0)
    serving = Environment.from_config(load_config(path), tmp_path).serving_config()
    assert serving.port == 18181
    assert serving.fallback == UniformFallbackConfig(model_version="pendulum-day0")
    assert serving.action_kind is ActionKind.CONTINUOUS
    assert [(d.name, d.low, d.high) for d in serving.continuous_actions] == [("torque", -2.0, 2.0)]


def test_packaged_config_serves_nothing_without_a_model(tmp_path: Path) -> None:
    serving = Environment.from_config(load_config(), tmp_path).serving_config()
    assert serving.fallback == NoFallbackConfig()
    assert serving.action_kind is None and serving.continuous_actions is None


def test_discrete_server_with_a_continuous_box_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(CONTINUOUS_DAY0.replace("action_kind: continuous", "action_kind: discrete"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "serving" in message
    assert "continuous_actions is set but action_kind is 'discrete'" in message


def test_unknown_fallback_type_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("serving:\n  fallback: {type: random}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "serving.fallback" in str(info.value) and "'random'" in str(info.value)


def test_monitoring_alert_thresholds_reach_the_monitoring_config(tmp_path: Path) -> None:
    path = tmp_path / "pendulum.yaml"
    path.write_text(
        "monitoring:\n  min_log_density: -6.5\n  min_propensity: 0.002\n  max_reward_drop: 0.25\n"
    )
    monitoring = Environment.from_config(load_config(path), tmp_path).monitoring_config()
    assert (monitoring.min_log_density, monitoring.min_propensity, monitoring.max_reward_drop) == (
        -6.5,
        0.002,
        0.25,
    )
    default = Environment.from_config(load_config(), tmp_path).monitoring_config()
    assert default.min_log_density is None and default.min_propensity == 0.01
