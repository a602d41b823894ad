"""Run YAML → TrainRunConfig (errors name key, value, expectation), and `streamrl train` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timeline_files import write_run_config, write_timelines
from trainer_timelines import BANDIT_ACTIONS, make_bandit_timelines

from infra.cli import main as streamrl
from trainer import DqnConfig, ModelRegistry, OnnxPolicy, RunConfigError, load_run_config

FAST = {"gamma": 0.0, "batch_size": 64, "learning_rate": 3e-3, "hidden_sizes": [16, 16], "num_epochs": 4}


def _edit(path: Path, change) -> Path:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))
    return path


def test_valid_file_becomes_typed_config_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write_run_config(tmp_path, FAST, checkpoint={"dir": "ckpt", "interval_steps": 5})
    config = load_run_config(path)
    assert isinstance(config.algorithm, DqnConfig) and config.algorithm.hidden_sizes == [16, 16]
    assert (
        config.data.output_dir == tmp_path / "stream" and config.output.registry_dir == tmp_path / "registry"
    )
    assert config.checkpoint is not None and config.checkpoint.dir == tmp_path / "ckpt"
    assert config.data.start is not None and config.data.start.utcoffset() is not None
    assert config.actions == BANDIT_ACTIONS and config.distributed.backend == "auto"


@pytest.mark.parametrize(
    ("change", "key", "shown", "expected"),
    [
        (lambda d: d["algorithm"].update(gamma=2.0), "algorithm.gamma", "2.0", "less than or equal to 1"),
        (lambda d: d["algorithm"].update(type="ppo"), "algorithm", "{…}", "'ppo'"),
        (lambda d: d["algorithm"].update(hidden_sizes=[8, 0]), "algorithm.hidden_sizes", "[8, 0]", ">= 1"),
        (
            lambda d: d.update(checkpoint={"dir": "c", "intervall_steps": 3}),
            "checkpoint.intervall_steps",
            "3",
            "Extra inputs are not permitted",
        ),
        (
            lambda d: d["data"].update(start="2026-11-23T00:00:00"),
            "data.start",
            "'2026-11-23T00:00:00'",
            "timezone",
        ),
        (lambda d: d["data"].update(end="2026-11-22T00:00:00Z"), "data", "{…}", "must be before end"),
        (lambda d: d.update(actions=["up", "up"]), "<root>", "{…}", "['up'] appear more than once"),
        (
            lambda d: d.update(distributed={"backend": "mpi"}),
            "distributed.backend",
            "'mpi'",
            "'auto', 'gloo' or 'nccl'",
        ),
    ],
)
def test_invalid_file_names_the_key_the_value_and_what_was_expected(
    tmp_path: Path, change, key: str, shown: str, expected: str
) -> None:
    path = _edit(write_run_config(tmp_path, FAST), change)
    with pytest.raises(RunConfigError) as caught:
        load_run_config(path)
    message = str(caught.value)
    assert caught.value.key == key and str(path) in message
    assert f"key '{key}' has value {shown}" in message and expected in message


def test_unreadable_and_non_mapping_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RunConfigError, match="cannot read config file .*missing.yaml"):
        load_run_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RunConfigError, match="expected a mapping of sections at the top, got list"):
        load_run_config(tmp_path / "list.yaml")


def test_streamrl_train_registers_a_model_and_reports_to_tensorboard(tmp_path: Path, capsys) -> None:
    write_timelines(make_bandit_timelines(300, seed=3), tmp_path / "stream")
    path = write_run_config(tmp_path, FAST)

    assert streamrl(["train", "--config", str(path)]) == 0

    registry = ModelRegistry(tmp_path / "registry")
    (version,) = registry.list_versions()
    assert registry.deployed() is None, "training registers; only the gate deploys"
    assert f"registered dqn model {version}" in capsys.readouterr().out
    metadata = registry.metadata(version)
    assert metadata.actions == BANDIT_ACTIONS and metadata.data_range.rows == 300
    assert metadata.exploration.type == "epsilon_greedy"
    policy = OnnxPolicy.load(registry, version)
    assert policy.q_values(policy.features([{"x1": 0.5}]), policy.possible_mask([BANDIT_ACTIONS])).shape == (
        1,
        3,
    )
    assert list((tmp_path / "tb").glob("*.json")), "the fitted normalization spec is saved beside the logs"

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for action in BANDIT_ACTIONS:
        assert {
            f"train/q_mean/{action}",
            f"train/q_std/{action}",
            f"train/model_action_share/{action}",
            f"train/logged_action_share/{action}",
        } <= tags
    assert {"train/td_loss", "train/mc_loss", "train/learning_rate", "train/transitions_per_s"} <= tags
    assert [e.step for e in events.Scalars("train/td_loss")] == [0, 1, 2, 3]
    assert events.Scalars("train/learning_rate")[-1].value == pytest.approx(3e-3)
    assert all(e.value > 0 for e in events.Scalars("train/transitions_per_s"))
    shares = sum(events.Scalars(f"train/model_action_share/{a}")[-1].value for a in BANDIT_ACTIONS)
    assert shares == pytest.approx(1.0)
    assert events.Scalars("train/td_loss")[-1].value < events.Scalars("train/td_loss")[0].value


@pytest.mark.parametrize("algorithm", ["linucb", "linear_thompson", "neural_bandit"])
def test_streamrl_train_registers_a_bandit_and_prints_its_own_metrics(
    tmp_path: Path, capsys, algorithm: str
) -> None:
    write_timelines(make_bandit_timelines(200, seed=3), tmp_path / "stream")
    path = _edit(write_run_config(tmp_path, FAST), lambda d: d.update(algorithm={"type": algorithm}))

    assert streamrl(["train", "--config", str(path)]) == 0

    registry = ModelRegistry(tmp_path / "registry")
    (version,) = registry.list_versions()
    metadata = registry.metadata(version)
    assert metadata.algorithm == algorithm
    out = capsys.readouterr().out
    assert f"registered {algorithm} model {version}" in out
    assert "train/td_loss" not in metadata.training_metrics  # a bandit has no TD loss to print
    mse = metadata.training_metrics["train/reward_mse"]
    assert f"train/reward_mse={mse:.4g}" in out


def test_streamrl_train_reports_an_empty_time_range(tmp_path: Path, capsys) -> None:
    write_timelines(make_bandit_timelines(20, seed=3), tmp_path / "stream")
    path = _edit(
        write_run_config(tmp_path, FAST),
        lambda d: d["data"].update(start="2030-01-01T00:00:00Z", end="2030-01-02T00:00:00Z"),
    )
    assert streamrl(["train", "--config", str(path)]) == 1
    assert "no timelines under" in capsys.readouterr().err
