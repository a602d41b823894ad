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

from trainer._columns import segment_bounds
from trainer.data import TransitionTensors, mdp_order


@dataclasses.dataclass(frozen=True, slots=True)
class NStepTargets:
    """Per row (in the order given): the n-step reward sum, the row bootstrapped from, and m."""

    returns: np.ndarray  # float64 [N]
    last: np.ndarray  # int64 [N] row whose next state (and not_terminal, next mask) is bootstrapped from
    steps: np.ndarray  # int64 [N] m, the number of rewards summed


def n_step_transitions(
    timelines: pd.DataFrame, data: TransitionTensors, n_step: int, gamma: float
) -> TransitionTensors:
    """`data` (built from `timelines`, same row order) with n-step rewards, next states and discounts."""
    if n_step == 1:
        return data
    order, sorted_codes = mdp_order(timelines["mdp_id"], timelines["sequence_number"])
    sorted_targets = sorted_n_step_targets(
        data.rewards.numpy().astype(np.float64)[order],
        data.not_terminal.numpy()[order] > 0.5,
        sorted_codes,
        n_step,
        gamma,
    )
    targets = NStepTargets(
        returns=np.empty_like(sorted_targets.returns),
        last=np.empty_like(sorted_targets.last),
        steps=np.empty_like(sorted_targets.steps),
    )
    targets.returns[order] = sorted_targets.returns
    targets.last[order] = order[sorted_targets.last]
    targets.steps[order] = sorted_targets.steps
    return apply_n_step(data, targets, gamma)


def sorted_n_step_targets(
    rewards: np.ndarray, not_terminal: np.ndarray, mdp_codes: np.ndarray, n_step: int, gamma: float
) -> NStepTargets:
    """n-step targets of rows already ordered by MDP then sequence_number; `last` indexes that order.

    One vectorized step per window offset k < n (not per row): a row's window stays open while
    the row at offset k is not terminal and the MDP has a row at offset k + 1.
    """
    n_rows = len(rewards)
    rows = np.arange(n_rows, dtype=np.int64)
    _, ends = segment_bounds(mdp_codes)
    end_of = np.repeat(ends, np.diff(np.r_[0, ends + 1])) if n_rows else rows
    returns = np.zeros(n_rows, dtype=np.float64)
    last = rows.copy()
    steps = np.zeros(n_rows, dtype=np.int64)
    open_rows = rows
    for k in range(n_step):
        at = open_rows + k
        returns[open_rows] += rewards[at] * gamma**k
        last[open_rows] = at
        steps[open_rows] = k + 1
        still = not_terminal[at] & (at < end_of[open_rows])
        open_rows = open_rows[still]
        if len(open_rows) == 0:
            break
    return NStepTargets(returns=returns, last=last, steps=steps)


def apply_n_step(data: TransitionTensors, targets: NStepTargets, gamma: float) -> TransitionTensors:
    """`data` with rewards, next states, terminal flags, next masks and discounts of its n-step targets."""
    return dataclasses.replace(
        data,
        rewards=torch.as_tensor(targets.returns.astype(np.float32)),
        next_states=data.next_states[targets.last],
        not_terminal=data.not_terminal[targets.last],
        possible_next_mask=data.possible_next_mask[targets.last],
        discounts=torch.as_tensor((gamma ** targets.steps.astype(np.float64)).astype(np.float32)),
    )
