"""The simulated notification app talking to streamrl the way a real app would.

For every user and slot it asks serving for an action over HTTP (`/v1/act/batch`),
applies it in the simulator, and logs the resulting reward to Kafka with the app-side
`EventLogger`. Serving logs the decisions itself. Nothing here reads streamrl internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np

from apps.notifications import ACTIONS, FEATURE_NAMES, SEND, Day, NotificationSim, mdp_id_for
from contracts import RewardEvent, StreamrlError
from stream import EventLogger


class AppError(StreamrlError):
    """The simulated app could not complete a day (serving refused or failed requests)."""


@dataclass(frozen=True)
class DayOutcome:
    """What one simulated day produced, as the app saw it."""

    day: Day
    decisions: int
    realized_reward: float  # mean reward per decision actually obtained
    send_share: float
    model_versions: dict[str, int]  # decisions per serving model version
    request_ids: list[str]


def run_day(
    sim: NotificationSim,
    day_index: int,
    serving_url: str,
    logger: EventLogger,
    *,
    batch_size: int = 500,
    timeout_s: float = 30.0,
) -> DayOutcome:
    """Play one day: every user, every slot, one decision each, rewards logged to Kafka."""
    from datetime import UTC, datetime

    day = sim.start_day(day_index)
    n = sim.config.n_users
    sent_previous = np.zeros(n, dtype=bool)
    total_reward = 0.0
    sends = 0
    versions: dict[str, int] = {}
    request_ids: list[str] = []
    with httpx.Client(base_url=serving_url, timeout=timeout_s) as client:
        for slot in range(sim.config.slots_per_day):
            features = sim.features(day, slot, sent_previous)
            actions: list[str] = []
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                body = {
                    "requests": [
                        {
                            "entity_id": sim.user_ids[i],
                            "mdp_id": mdp_id_for(sim.user_ids[i], day_index),
                            "sequence_number": slot,
                            "context_features": dict(
                                zip(FEATURE_NAMES, map(float, features[i]), strict=True)
                            ),
                            "possible_actions": list(ACTIONS),
                        }
                        for i in range(start, stop)
                    ]
                }
                response = client.post("/v1/act/batch", json=body)
                if response.status_code != 200:
                    raise AppError(
                        f"serving at {serving_url} answered {response.status_code} for day {day_index} "
                        f"slot {slot}: {response.text[:500]}"
                    )
                for item in response.json()["responses"]:
                    actions.append(item["action"])
                    request_ids.append(item["request_id"])
                    versions[item["model_version"]] = versions.get(item["model_version"], 0) + 1
            send = np.array([a == SEND for a in actions])
            rewards = sim.draw_rewards(day, slot, send, sent_previous)
            now = datetime.now(UTC)
            for request_id, reward in zip(request_ids[-n:], rewards, strict=True):
                logger.log_reward(RewardEvent(request_id=request_id, timestamp=now, reward=float(reward)))
            total_reward += float(rewards.sum())
            sends += int(send.sum())
            sent_previous = send
    logger.flush(timeout_s=timeout_s)
    decisions = n * sim.config.slots_per_day
    return DayOutcome(
        day=day,
        decisions=decisions,
        realized_reward=total_reward / decisions,
        send_share=sends / decisions,
        model_versions=versions,
        request_ids=request_ids,
    )
