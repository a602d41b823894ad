"""DDP beyond DQN: 2 gloo processes reach the weights 1 process reaches, for SAC, TD3, parametric DQN,
the neural bandit, and LinUCB's all-reduced closed form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from family_runs import EPOCHS, FAMILIES, LINEAR, STEPS_PER_EPOCH, train, two_process_worker

from tests.helpers import free_port
from trainer.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def two_process_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spawn of 2 processes trains every family in turn (one process-group start for all)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(two_process_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_two_process_run_matches_one_process(name: str, two_process_dir: Path, tmp_path: Path) -> None:
    family = FAMILIES[name]
    steps: list[int] = []
    one = train(family, tmp_path / "tb", on_step=steps.append)
    two = torch.load(two_process_dir / f"{name}.pt", weights_only=True)

    assert steps == two["steps"] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), "global batches count"
    weights = one.network.state_dict()
    assert two["weights"].keys() == weights.keys()
    for key, tensor in weights.items():
        torch.testing.assert_close(two["weights"][key], tensor, rtol=0, atol=1e-5, msg=key)
    initial = train(family, tmp_path / "init", config=family.config.model_copy(update={"num_epochs": 1}))
    moved = max(
        float((initial.network.state_dict()[k] - tensor).abs().max())
        for k, tensor in weights.items()
        if tensor.is_floating_point()
    )
    assert moved > 1e-3, "later epochs moved the weights, so matching them is not trivial"
    assert len(two["history"]) == len(one.history) == EPOCHS
    for two_epoch, one_epoch in zip(two["history"], one.history, strict=True):
        assert two_epoch == pytest.approx(one_epoch, rel=1e-4, abs=1e-6), "metrics reduced over processes"
    saved = [int(p.stem.split("-")[1]) for p in list_checkpoints(two_process_dir / name / "ckpt")]
    assert saved == [EPOCHS * STEPS_PER_EPOCH], "rank 0 wrote the epoch-end checkpoints"


def test_linear_bandit_statistics_are_summed_over_processes(two_process_dir: Path, tmp_path: Path) -> None:
    one = train(LINEAR, tmp_path / "tb").network.state_dict()
    two = torch.load(two_process_dir / "linucb.pt", weights_only=True)

    for key in ("means", "a_inv"):
        torch.testing.assert_close(two["weights"][key], one[key], rtol=1e-5, atol=1e-7, msg=key)
