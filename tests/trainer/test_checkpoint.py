"""Checkpoints: a killed run resumes and ends where an uninterrupted run ends; no pickles; same run only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stopped_runs import Killed, kill_at
from timeline_files import write_run_config, write_timelines
from trainer_timelines import TWO_STEP_ACTIONS, fit_spec, make_bandit_timelines, make_two_step_timelines

from trainer import CheckpointConfig, CheckpointError, DqnConfig, ModelRegistry, load_run_config, train_dqn
from trainer.checkpoint import list_checkpoints
from trainer.run_config import TrainRunConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = DqnConfig(gamma=0.9, num_epochs=4, batch_size=32, learning_rate=3e-3, hidden_sizes=[16, 16], seed=3)


def _assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("interval_steps", "kill_step", "kept"),
    [(3, 11, [8, 9]), (100, 6, [4])],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_stopped_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, interval_steps: int, kill_step: int, kept: list[int]
) -> None:
    timelines = make_two_step_timelines(80, seed=4)  # 4 steps an epoch
    spec = fit_spec(timelines)
    checkpoint = CheckpointConfig(dir=tmp_path / "ckpt", interval_steps=interval_steps)
    uninterrupted = train_dqn(timelines, spec, TWO_STEP_ACTIONS, CONFIG, tmp_path / "a")

    with pytest.raises(Killed):
        train_dqn(
            timelines,
            spec,
            TWO_STEP_ACTIONS,
            CONFIG,
            tmp_path / "b",
            checkpoint=checkpoint,
            on_step=kill_at(kill_step),
        )
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(checkpoint.dir)]
    assert steps == kept, "every epoch end and every interval_steps; the 2 newest are kept"

    resumed = train_dqn(timelines, spec, TWO_STEP_ACTIONS, CONFIG, tmp_path / "b", checkpoint=checkpoint)

    _assert_same_weights(uninterrupted.network.state_dict(), resumed.network.state_dict())
    assert len(resumed.history) == CONFIG.num_epochs
    for before, after in zip(uninterrupted.history, resumed.history, strict=True):
        assert after == pytest.approx(before, rel=1e-5)


def test_checkpoints_are_plain_state_dicts_loadable_without_code(tmp_path: Path) -> None:
    timelines = make_two_step_timelines(40, seed=5)
    checkpoint = CheckpointConfig(dir=tmp_path / "ckpt", interval_steps=1000)
    train_dqn(
        timelines, fit_spec(timelines), TWO_STEP_ACTIONS, CONFIG, tmp_path / "tb", checkpoint=checkpoint
    )

    newest = list_checkpoints(checkpoint.dir)[-1]
    state = torch.load(newest, weights_only=True)
    assert {"learner", "torch_rng", "epoch", "global_step", "fingerprint"} <= set(state)
    assert {"online", "target", "optimizer"} <= set(state["learner"])
    assert state["epoch"] == CONFIG.num_epochs and isinstance(
        state["learner"]["online"]["advantage.weight"], torch.Tensor
    )
    assert state["learner"]["optimizer"]["state"], "Adam moments are saved"


@pytest.mark.parametrize(
    ("other_config", "other_data", "differs"),
    [
        (CONFIG.model_copy(update={"learning_rate": 1e-2}), False, "algorithm_config"),
        (CONFIG, True, "data_sha256"),
    ],
)
def test_resume_refuses_a_checkpoint_from_a_different_run(
    tmp_path: Path, other_config: DqnConfig, other_data: bool, differs: str
) -> None:
    timelines = make_two_step_timelines(40, seed=6)
    spec = fit_spec(timelines)
    checkpoint = CheckpointConfig(dir=tmp_path / "ckpt", interval_steps=2)
    with pytest.raises(Killed):
        train_dqn(
            timelines,
            spec,
            TWO_STEP_ACTIONS,
            CONFIG,
            tmp_path / "tb",
            checkpoint=checkpoint,
            on_step=kill_at(2),
        )
    data = make_two_step_timelines(40, seed=7) if other_data else timelines

    with pytest.raises(CheckpointError) as caught:
        train_dqn(data, spec, TWO_STEP_ACTIONS, other_config, tmp_path / "tb", checkpoint=checkpoint)
    assert caught.value.differing == [differs]
    assert "different run" in str(caught.value) and "checkpoint.resume: false" in str(caught.value)
    # More epochs is the same run continued, not a different one.
    longer = CONFIG.model_copy(update={"num_epochs": CONFIG.num_epochs + 1})
    assert (
        len(
            train_dqn(
                timelines, spec, TWO_STEP_ACTIONS, longer, tmp_path / "tb", checkpoint=checkpoint
            ).history
        )
        == 5
    )


def test_resume_refuses_a_checkpoint_of_an_older_format(tmp_path: Path) -> None:
    """Format 1 DQN checkpoints kept the networks at the top level; this code reads format 2."""
    timelines = make_two_step_timelines(40, seed=6)
    old = tmp_path / "ckpt" / "checkpoint-0000000002.pt"
    old.parent.mkdir()
    torch.save(
        {"format": 1, "fingerprint": "0" * 64, "fingerprint_parts": {}, "global_step": 2, "online": {}}, old
    )

    with pytest.raises(CheckpointError, match="has format 1, this code reads format 2") as caught:
        train_dqn(
            timelines,
            fit_spec(timelines),
            TWO_STEP_ACTIONS,
            CONFIG,
            tmp_path / "tb",
            checkpoint=CheckpointConfig(dir=old.parent),
        )
    assert caught.value.path == old and "checkpoint.resume: false" in str(caught.value)


def test_sigkilled_cli_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A real `streamrl train` process is SIGKILLed mid-run; rerunning it ends where an uninterrupted run ends."""
    algorithm = {"gamma": 0.5, "batch_size": 16, "hidden_sizes": [16, 16], "num_epochs": 30, "seed": 1}
    write_timelines(make_bandit_timelines(320, seed=8), tmp_path / "stream")
    killed = load_run_config(
        write_run_config(tmp_path, algorithm, checkpoint={"dir": "ckpt", "interval_steps": 50, "keep": 2})
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "train", "--config", str(tmp_path / "run.yaml")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            not list_checkpoints(killed.checkpoint.dir)
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert process.poll() is None, (
            f"run ended before it could be killed: {process.stderr.read().decode()}"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert ModelRegistry(killed.output.registry_dir).list_versions() == []
    resumed_from = int(list_checkpoints(killed.checkpoint.dir)[-1].stem.split("-")[1])
    assert resumed_from < 20 * 30, "killed mid-run"

    from trainer import run_training

    resumed = run_training(killed)
    fresh = run_training(
        TrainRunConfig.model_validate(
            killed.model_dump() | {"checkpoint": {"dir": tmp_path / "fresh", "interval_steps": 10_000}}
        )
    )
    assert resumed is not None and fresh is not None
    last = torch.load(list_checkpoints(killed.checkpoint.dir)[-1], weights_only=True)
    last_fresh = torch.load(list_checkpoints(tmp_path / "fresh")[-1], weights_only=True)
    assert last["global_step"] == last_fresh["global_step"] == 20 * 30
    _assert_same_weights(last_fresh["learner"]["online"], last["learner"]["online"])
    assert resumed.training_metrics == pytest.approx(fresh.training_metrics, rel=1e-5)
