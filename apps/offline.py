"""Timelines straight from the simulator, bypassing Kafka and Spark.

Used to tune the learner and in benchmarks: the rows have exactly the schema the stream
job writes (docs/architecture.md), so whatever trains on them trains on real timelines too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from apps.notifications import ACTIONS, FEATURE_NAMES, SEND, NotificationSim, mdp_id_for

ServedSendProbability = Callable[[np.ndarray], np.ndarray]


def simulate_timelines(
    sim: NotificationSim,
    day_index: int,
    send_probability: ServedSendProbability,
    model_version: str,
    *,
    seed: int = 0,
    start: datetime | None = None,
) -> pd.DataFrame:
    """Log one day under a stochastic policy and return its timeline rows."""
    rng = np.random.default_rng((seed, day_index))
    day = sim.start_day(day_index)
    n = sim.config.n_users
    start = start or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day_index)
    sent_previous = np.zeros(n, dtype=bool)
    steps = []
    for slot in range(sim.config.slots_per_day):
        features = sim.features(day, slot, sent_previous)
        p_send = send_probability(features)
        send = rng.random(n) < p_send
        rewards = sim.draw_rewards(day, slot, send, sent_previous)
        propensity = np.where(send, p_send, 1.0 - p_send)
        steps.append((features, send, rewards, propensity))
        sent_previous = send
    rows = []
    slots = sim.config.slots_per_day
    for i in range(n):
        for slot in range(slots):
            features, send, rewards, propensity = steps[slot]
            state = dict(zip(FEATURE_NAMES, map(float, features[i]), strict=True))
            last = slot == slots - 1
            nxt = None if last else dict(zip(FEATURE_NAMES, map(float, steps[slot + 1][0][i]), strict=True))
            timestamp = start + timedelta(hours=4 * slot)
            rows.append(
                {
                    "mdp_id": mdp_id_for(sim.user_ids[i], day_index),
                    "sequence_number": slot,
                    "sequence_number_ordinal": slot + 1,
                    "request_id": str(uuid.UUID(int=int(rng.integers(0, 2**63)))),
                    "entity_id": sim.user_ids[i],
                    "timestamp": timestamp,
                    "ds": timestamp.date().isoformat(),
                    "state_features": state,
                    "action": SEND if send[i] else ACTIONS[0],
                    "action_probability": float(propensity[i]),
                    "reward": float(rewards[i]),
                    "reward_observed": True,
                    "metrics": {},
                    "possible_actions": list(ACTIONS),
                    "next_state_features": {} if last else nxt,
                    "next_action": None if last else (SEND if steps[slot + 1][1][i] else ACTIONS[0]),
                    "possible_next_actions": [] if last else list(ACTIONS),
                    "time_diff": 0 if last else 1,
                    "time_since_first": slot,
                    "not_terminal": not last,
                    "model_version": model_version,
                }
            )
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame
