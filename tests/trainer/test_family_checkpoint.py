"""Checkpoints beyond DQN: SAC, TD3, parametric DQN and the neural bandit, stopped mid-run and resumed,
end exactly where an uninterrupted run ends; a checkpoint of another run is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_runs import EPOCHS, FAMILIES, LINEAR, STEPS_PER_EPOCH, train
from stopped_runs import Killed, kill_at

from trainer import CheckpointConfig, CheckpointError, TrainerError
from trainer.checkpoint import list_checkpoints


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stopped_run_resumes_to_the_uninterrupted_result(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    timelines = family.timelines()
    checkpoint = CheckpointConfig(dir=tmp_path / "ckpt", interval_steps=3)
    uninterrupted = train(family, tmp_path / "a", timelines=timelines)

    with pytest.raises(Killed):
        train(family, tmp_path / "b", timelines=timelines, checkpoint=checkpoint, on_step=kill_at(10))
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(checkpoint.dir)]
    # Every 3 steps and every epoch end (4 steps an epoch); the newest 2 are kept. Step 9 is odd and
    # mid-epoch, so the resumed run needs the update counter (policy_delay 2) and the epoch's sums.
    assert steps == [8, 9]
    resumed_steps: list[int] = []

    resumed = train(
        family, tmp_path / "b", timelines=timelines, checkpoint=checkpoint, on_step=resumed_steps.append
    )

    assert resumed_steps == list(range(10, EPOCHS * STEPS_PER_EPOCH + 1)), "resumed after step 9"
    expected = uninterrupted.network.state_dict()
    assert resumed.network.state_dict().keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(resumed.network.state_dict()[key], tensor, rtol=0, atol=1e-6, msg=key)
    assert len(resumed.history) == EPOCHS
    for after, before in zip(resumed.history, uninterrupted.history, strict=True):
        assert after == pytest.approx(before, rel=1e-6)
    state = torch.load(list_checkpoints(checkpoint.dir)[-1], weights_only=True)
    assert state["global_step"] == EPOCHS * STEPS_PER_EPOCH and state["epoch"] == EPOCHS
    optimizers = [v for k, v in state["learner"].items() if "optimizer" in k]
    assert optimizers and all(o["state"] for o in optimizers), "Adam moments are saved"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_resume_refuses_a_checkpoint_from_a_different_run(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    timelines = family.timelines()
    checkpoint = CheckpointConfig(dir=tmp_path / "ckpt", interval_steps=2)
    with pytest.raises(Killed):
        train(family, tmp_path / "tb", timelines=timelines, checkpoint=checkpoint, on_step=kill_at(2))
    other_seed = family.config.model_copy(update={"seed": family.config.seed + 1})

    with pytest.raises(CheckpointError) as caught:
        train(family, tmp_path / "tb", config=other_seed, timelines=timelines, checkpoint=checkpoint)
    assert caught.value.differing == ["algorithm_config"]
    other_rewards = timelines.assign(reward=timelines["reward"] + 1.0)
    with pytest.raises(CheckpointError) as caught:
        train(family, tmp_path / "tb", timelines=other_rewards, checkpoint=checkpoint)
    assert caught.value.differing == ["data_sha256"]
    # More epochs is the same run continued, not a different one.
    longer = family.config.model_copy(update={"num_epochs": EPOCHS + 1})
    result = train(family, tmp_path / "tb", config=longer, timelines=timelines, checkpoint=checkpoint)
    assert len(result.history) == EPOCHS + 1


def test_a_closed_form_bandit_refuses_a_checkpoint_instead_of_ignoring_it(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="closed-form fit .* nothing to checkpoint"):
        train(LINEAR, tmp_path / "tb", checkpoint=CheckpointConfig(dir=tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists()
