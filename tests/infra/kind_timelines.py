"""Small synthetic timelines of every action kind, written where the stream job writes them.

Columns as `stream.load_timelines` returns them (`tests.helpers.TIMELINE_SCHEMA`);
each builder takes a run-config-like mapping so the rows use its action names and bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from contracts import ActionKind
from tests.helpers import write_timeline_partition

ROWS = 160
_T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _row(mdp: int, seq: int, state: dict[str, float], reward: float, kind: ActionKind, **fields) -> dict:
    """One timeline row; `fields` fill the kind's columns and the next-step ones (terminal if absent)."""
    terminal = "next_state_features" not in fields
    return {
        "mdp_id": f"m{mdp}",
        "request_id": f"m{mdp}-{seq}",
        "entity_id": f"user{mdp}",
        "sequence_number": seq,
        "sequence_number_ordinal": seq + 1,
        "timestamp": _T0 + timedelta(seconds=2 * mdp + seq),
        "state_features": state,
        "action": None,
        "action_probability": None,
        "reward": float(reward),
        "reward_observed": True,
        "metrics": {},
        "next_state_features": {},
        "next_action": None,
        "possible_next_actions": [],
        "time_diff": 0 if terminal else 1,
        "time_since_first": seq,
        "not_terminal": not terminal,
        "model_version": "logging-v0",
        "action_kind": kind.value,
        **fields,
    }


def discrete_rows(run: dict[str, Any], rng: np.random.Generator, n: int = ROWS) -> list[dict]:
    """One-step MDPs (bandits need them, DQN takes them), uniform logging over the example's actions."""
    actions = run["actions"]
    rows = []
    for m in range(n):
        x = float(rng.uniform(-1, 1))
        pick = int(rng.integers(len(actions)))
        rows.append(
            _row(
                m,
                0,
                {"x": x, "z": float(rng.normal())},
                reward=x if pick == 0 else -x,
                kind=ActionKind.DISCRETE,
                action=actions[pick],
                action_probability=1.0 / len(actions),
                possible_actions=list(actions),
            )
        )
    return rows


def continuous_rows(run: dict[str, Any], rng: np.random.Generator, n: int = ROWS) -> list[dict]:
    """One-step MDPs, actions uniform in the example's box (log-density −Σ log(high − low))."""
    low, high = np.array(run["algorithm"]["action_low"]), np.array(run["algorithm"]["action_high"])
    rows = []
    for m in range(n):
        x = float(rng.uniform(-1, 1))
        vector = rng.uniform(low, high)
        rows.append(
            _row(
                m,
                0,
                {"x": x},
                reward=-float(np.sum((vector - x * high) ** 2)),
                kind=ActionKind.CONTINUOUS,
                possible_actions=list(run["actions"]),
                action_vector=[float(v) for v in vector],
                action_log_density=-float(np.sum(np.log(high - low))),
            )
        )
    return rows


def parametric_rows(run: dict[str, Any], rng: np.random.Generator, n: int = ROWS) -> list[dict]:
    """Two-step MDPs, 2–4 items on offer per step, uniform logging; value = user · item."""
    rows = []
    for m in range(n // 2):
        steps = []
        for _ in range(2):
            user = {"u0": float(rng.normal()), "u1": float(rng.normal())}
            items = [
                {"x0": float(rng.normal()), "x1": float(rng.normal())} for _ in range(rng.integers(2, 5))
            ]
            steps.append((user, items))
        for s, (user, items) in enumerate(steps):
            pick = int(rng.integers(len(items)))
            ids = [f"item{k}" for k in range(len(items))]
            last = s == len(steps) - 1
            following = (
                {}
                if last
                else {
                    "next_state_features": steps[s + 1][0],
                    "next_action": "item0",
                    "possible_next_actions": [f"item{k}" for k in range(len(steps[s + 1][1]))],
                }
            )
            rows.append(
                _row(
                    m,
                    s,
                    user,
                    reward=user["u0"] * items[pick]["x0"] + user["u1"] * items[pick]["x1"],
                    kind=ActionKind.PARAMETRIC,
                    action=ids[pick],
                    action_probability=1.0 / len(items),
                    possible_actions=ids,
                    action_features=items[pick],
                    possible_action_features=items,
                    possible_next_action_features=[] if last else steps[s + 1][1],
                    **following,
                )
            )
    return rows


# Synthetic timelines of each action kind, shaped by the example (its action names and bounds).
TIMELINES: dict[ActionKind, Callable[..., list[dict]]] = {
    ActionKind.DISCRETE: discrete_rows,
    ActionKind.CONTINUOUS: continuous_rows,
    ActionKind.PARAMETRIC: parametric_rows,
}


def write_timelines(rows: list[dict], output_dir: Path) -> None:
    """One parquet file in the layout the stream job writes (`timelines/ds=…/batch_id=0/`)."""
    write_timeline_partition(rows, output_dir, f"{_T0:%Y-%m-%d}")
