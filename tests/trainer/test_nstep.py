"""n-step DQN targets from timelines: exact discounted sums, truncated at terminals, bootstrap at γ^m."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from trainer_timelines import _row, fit_spec

from trainer import DqnConfig, train_dqn
from trainer.data import build_transitions
from trainer.nstep import n_step_transitions

GAMMA = 0.5
CHAIN_REWARDS = [1.0, 2.0, 3.0, 4.0, 5.0]


def _chain(mdp: str, rewards: list[float], *, terminal: bool = True) -> list[dict]:
    """One MDP walking positions 0, 1, 2, … with action `go`; the last row terminal or cut off."""
    rows = []
    for seq, reward in enumerate(rewards):
        last = seq == len(rewards) - 1
        follow = (
            {}
            if (last and terminal)
            else {
                "next_state": {"pos": float(seq + 1)},
                "next_action": "go",
                "next_possible": ["go"],
            }
        )
        rows.append(_row(mdp, seq, {"pos": float(seq)}, "go", reward, ["go"], **follow))
    return rows


def _transitions(frame: pd.DataFrame, n_step: int):
    data = build_transitions(frame, ["pos"], ["go"], GAMMA)
    return n_step_transitions(frame, data, n_step, GAMMA)


def test_n_step_targets_are_the_exact_discounted_sums_truncated_at_the_terminal() -> None:
    # Rows shuffled: the window must follow sequence_number, not row order.
    frame = pd.DataFrame(_chain("a", CHAIN_REWARDS)).sample(frac=1.0, random_state=0).reset_index(drop=True)
    data = _transitions(frame, n_step=3)

    for row in range(len(frame)):
        t = int(frame.at[row, "sequence_number"])
        window = CHAIN_REWARDS[t : t + 3]
        expected = sum(r * GAMMA**k for k, r in enumerate(window))
        assert data.rewards[row].item() == pytest.approx(expected, abs=1e-6)
        reaches_end = t + 3 >= len(CHAIN_REWARDS)
        assert data.not_terminal[row].item() == (0.0 if reaches_end else 1.0)
        if not reaches_end:
            assert data.next_states[row, 0].item() == t + 3  # s_(t+n)
            assert data.discounts[row].item() == pytest.approx(GAMMA**3)


def test_an_mdp_cut_off_without_a_terminal_bootstraps_from_its_last_next_state() -> None:
    frame = pd.DataFrame(_chain("b", [1.0, 1.0], terminal=False) + _chain("c", [7.0]))
    data = _transitions(frame, n_step=4)

    assert data.rewards[:2].tolist() == pytest.approx([1.5, 1.0])
    assert data.discounts[:2].tolist() == pytest.approx([GAMMA**2, GAMMA])
    assert data.next_states[:2, 0].tolist() == [2.0, 2.0]
    assert data.not_terminal.tolist() == [1.0, 1.0, 0.0]
    assert data.rewards[2].item() == 7.0  # another MDP's rows never leak into the window


def test_n_equal_1_leaves_the_one_step_transitions_untouched() -> None:
    frame = pd.DataFrame(_chain("a", CHAIN_REWARDS))
    data = build_transitions(frame, ["pos"], ["go"], GAMMA)
    assert n_step_transitions(frame, data, 1, GAMMA) is data
    assert torch.equal(data.discounts, torch.full((5,), GAMMA))
    with pytest.raises(ValidationError, match="n_step"):
        DqnConfig(n_step=0)


def test_dqn_with_n_step_learns_the_discounted_return_of_a_long_chain(tmp_path: Path) -> None:
    rewards = [0.0] * 9 + [1.0]
    frame = pd.DataFrame([row for i in range(20) for row in _chain(f"m{i}", rewards)])
    config = DqnConfig(
        gamma=0.9,
        n_step=5,
        num_epochs=60,
        batch_size=32,
        learning_rate=3e-3,
        hidden_sizes=[32],
        dueling=False,
    )
    result = train_dqn(frame, fit_spec(frame), ["go"], config, tmp_path / "tb")

    with torch.no_grad():
        q = result.network(torch.arange(10, dtype=torch.float32)[:, None], torch.ones(10, 1))[:, 0].numpy()
    expected = 0.9 ** (9 - np.arange(10))
    assert np.abs(q - expected).max() < 0.1, (q, expected)
