"""The simulated notification app talking to streamrl the way a real app would.

For every user and slot it gets one decision, applies it in the simulator, and logs the
resulting reward to Kafka with the app-side `EventLogger`. Who decides depends on the day:

- Until a model is approved, the app's own hand-written rule (`apps.rule_policy`) decides, and
  the app logs each decision with its exact propensity through serving's log-only
  `POST /v1/decisions/batch` (`batch_size` decisions a request).
- Once one is, the app asks serving (`POST /v1/act/batch`), which decides and logs itself.

Either way the decisions land in the same decision topic. Nothing here reads streamrl internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np

from apps.notifications import ACTIONS, DONT_SEND, FEATURE_NAMES, SEND, Day, NotificationSim, mdp_id_for
from apps.rule_policy import NotifyQuietUsersRule, RuleDecisions
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
    model_versions: dict[str, int]  # decisions per policy: serving model version or the rule's label
    request_ids: list[str]


def run_day(
    sim: NotificationSim,
    day_index: int,
    serving_url: str,
    logger: EventLogger,
    *,
    rule: NotifyQuietUsersRule | None = None,
    batch_size: int = 500,
    timeout_s: float = 30.0,
) -> DayOutcome:
    """Play one day: every user, every slot, one decision each, rewards logged to Kafka.

    With `rule`, the app decides by the rule and logs through `/v1/decisions/batch`; without,
    serving decides through `/v1/act/batch`. Either way `batch_size` decisions a request.
    """
    day = sim.start_day(day_index)
    n = sim.config.n_users
    rng = np.random.default_rng((sim.config.rule_seed, day_index))  # the rule's draws
    sent_previous = np.zeros(n, dtype=bool)
    total_reward = 0.0
    sends = 0
    versions: dict[str, int] = {}
    request_ids: list[str] = []
    with httpx.Client(base_url=serving_url, timeout=timeout_s) as client:
        for slot in range(sim.config.slots_per_day):
            features = sim.features(day, slot, sent_previous)
            contexts = [
                {
                    "entity_id": sim.user_ids[i],
                    "mdp_id": mdp_id_for(sim.user_ids[i], day_index),
                    "sequence_number": slot,
                    "context_features": dict(zip(FEATURE_NAMES, map(float, features[i]), strict=True)),
                    "possible_actions": list(ACTIONS),
                }
                for i in range(n)
            ]
            where = f"serving at {serving_url}, day {day_index} slot {slot}"
            if rule is None:
                send, slot_ids, slot_versions = _ask_serving(client, contexts, batch_size, where)
            else:
                decisions = rule.decide(features, rng)
                slot_ids = _log_decisions(client, contexts, decisions, rule.name, batch_size, where)
                send, slot_versions = decisions.send, [rule.name] * n
            for version in slot_versions:
                versions[version] = versions.get(version, 0) + 1
            request_ids.extend(slot_ids)
            rewards = sim.draw_rewards(day, slot, send, sent_previous)
            now = datetime.now(UTC)
            for request_id, reward in zip(slot_ids, rewards, strict=True):
                logger.log_reward(RewardEvent(request_id=request_id, timestamp=now, reward=float(reward)))
            total_reward += float(rewards.sum())
            sends += int(send.sum())
            sent_previous = send
    logger.flush(timeout_s=timeout_s)
    decisions_made = n * sim.config.slots_per_day
    return DayOutcome(
        day=day,
        decisions=decisions_made,
        realized_reward=total_reward / decisions_made,
        send_share=sends / decisions_made,
        model_versions=versions,
        request_ids=request_ids,
    )


def _check(response: httpx.Response, where: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise AppError(
            f"{where}: {response.request.url.path} answered {response.status_code}: {response.text[:500]}"
        )
    return response.json()


def _ask_serving(
    client: httpx.Client, contexts: list[dict[str, Any]], batch_size: int, where: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Serving decides and logs: `(send, request ids, model versions)` in user order."""
    actions: list[str] = []
    ids: list[str] = []
    versions: list[str] = []
    for start in range(0, len(contexts), batch_size):
        body = {"requests": contexts[start : start + batch_size]}
        for item in _check(client.post("/v1/act/batch", json=body), where)["responses"]:
            actions.append(item["action"])
            ids.append(item["request_id"])
            versions.append(item["model_version"])
    return np.array([a == SEND for a in actions]), ids, versions


def _log_decisions(
    client: httpx.Client,
    contexts: list[dict[str, Any]],
    decisions: RuleDecisions,
    policy: str,
    batch_size: int,
    where: str,
) -> list[str]:
    """Log the app's own decisions through `/v1/decisions/batch`; their request ids in user order."""
    bodies = [
        {
            **context,
            "policy": policy,
            "action": SEND if send else DONT_SEND,
            "action_probability": float(propensity),
        }
        for context, send, propensity in zip(contexts, decisions.send, decisions.propensity, strict=True)
    ]
    ids: list[str] = []
    for start in range(0, len(bodies), batch_size):
        body = {"decisions": bodies[start : start + batch_size]}
        ids.extend(
            item["request_id"]
            for item in _check(client.post("/v1/decisions/batch", json=body), where)["responses"]
        )
    return ids
