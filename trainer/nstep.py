"""Multi-step (n-step) targets from timelines: the variant Horizon's users asked for (REFERENCE §1).

Row t of an MDP (rows ordered by sequence_number) becomes
  R_t = r_t + γ r_(t+1) + … + γ^(m−1) r_(t+m−1),  bootstrap γ^m · max_a Q(s_(t+m), a)
with m = min(n, steps left in the MDP). Reaching the terminal row inside the window stops the sum
and drops the bootstrap; an MDP whose last row is not terminal (cut off, time limit) bootstraps
from that row's next state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from trainer.data import TransitionTensors


def n_step_transitions(
    timelines: pd.DataFrame, data: TransitionTensors, n_step: int, gamma: float
) -> TransitionTensors:
    """`data` (built from `timelines`, same row order) with n-step rewards, next states and discounts."""
    if n_step == 1:
        return data
    frame = timelines.reset_index(drop=True)
    order = frame.sort_values(["mdp_id", "sequence_number"], kind="stable")
    positions = order.index.to_numpy()
    mdp_codes = pd.factorize(order["mdp_id"])[0]
    rewards = data.rewards.numpy().astype(np.float64)
    not_terminal = data.not_terminal.numpy() > 0.5
    n_rows = len(frame)
    returns = np.zeros(n_rows)
    last = np.zeros(n_rows, dtype=np.int64)  # row whose next state is bootstrapped from
    steps = np.zeros(n_rows, dtype=np.int64)
    # Walk each MDP backwards: row i's window is rows i .. i+m−1 of the sorted order.
    boundaries = np.flatnonzero(np.diff(mdp_codes)) + 1
    for segment in np.split(np.arange(n_rows), boundaries):
        rows = positions[segment]
        for k, row in enumerate(rows):
            window = rows[k : k + n_step]
            stop = next((j for j, r in enumerate(window) if not not_terminal[r]), len(window) - 1)
            window = window[: stop + 1]
            returns[row] = float(np.sum(rewards[window] * gamma ** np.arange(len(window))))
            last[row], steps[row] = window[-1], len(window)
    return dataclasses.replace(
        data,
        rewards=torch.as_tensor(returns.astype(np.float32)),
        next_states=data.next_states[last],
        not_terminal=data.not_terminal[last],
        possible_next_mask=data.possible_next_mask[last],
        discounts=torch.as_tensor((gamma ** steps.astype(np.float64)).astype(np.float32)),
    )
