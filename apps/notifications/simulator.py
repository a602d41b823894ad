"""The notification app run against streamrl over HTTP and Kafka: one simulated day per run.

The world is world.py, beside this file: users with a hidden activity and sensitivity to
notifications, 4 decision slots a day, fatigue after a notification, and the exact expected reward
per decision of any policy and of the oracle. The app's own day-0 policy is its hand-written rule
(apps/rule_policy.py: notify users active on ≤ 3 of the last 7 days unless just notified, ε-greedy).

One run plays day `--day` for every user, slot by slot:

- the app asks `GET /v1/apps/{app}/healthz` which model serves. While none does, it decides by its
  rule and logs each decision with its exact propensity through
  `POST /v1/apps/{app}/decisions/batch`, under the label `hand-written-rule`. Once one does, it asks
  `POST /v1/apps/{app}/act/batch` and serving decides, explores and logs. While a canary runs
  beside no model (the gate's `canary`: a candidate the logged data could not judge, tried on a
  share of the user-days), serving answers the user-days the canary does not take `not_served`,
  and the app decides and logs those by its rule;
- it draws each user's engagement and sends one reward event per decision to `{app}.rewards`
  with only its metrics, `{"engaged": 0 or 1, "sent": 0 or 1}`: the manifest's `reward.metrics`
  weigh them into the reward, engaged − 0.05 × sent.

The same users, day after day: `--seed` draws the population, and day k's observations, engagement
draws and the rule's draws are seeded by (seed, k) and (rule seed, k), so consecutive runs with
`--day 0, 1, 2, …` continue the same users and any day the rule served can be replayed exactly.

It prints one JSON line: the day's realized reward per decision, the rule's and the oracle's exact
expected reward per decision on the same users and day (`rule_reward`, `oracle_reward`), the share
sent, the decision count, the request ids (their count, and the file `--request-ids` wrote them
to, one a line), the decisions per serving model (`model_versions`) and the mean reward per
decision each realized (`realized_by_version`).

    python apps/notifications/simulator.py --url http://127.0.0.1:18083 \\
        --bootstrap 127.0.0.1:19092 --day 0 [--users 4000] [--seed 7] [--request-ids day0.txt]

Nothing here imports a streamrl stage: an app talks to it over HTTP and Kafka only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from apps.app_client import AppClientError, RewardProducer, post_batches
from apps.notifications.world import (
    ACTIONS,
    DONT_SEND,
    FEATURE_NAMES,
    SEND,
    Day,
    NotificationSim,
    NotificationSimConfig,
    mdp_id_for,
)
from apps.rule_policy import NotifyQuietUsersRule, RuleDecisions

NOT_SERVED = "not_served"  # serving's answer for an episode a canary beside no model left to the app

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.yaml"
_DEFAULTS = NotificationSimConfig()


class SimulatorError(AppClientError):
    """The manifest does not fit the world, or serving or Kafka failed the app."""


# --- what the app takes from its manifest ----------------------------------------------------------
@dataclass(frozen=True)
class AppSettings:
    """The app's name and its reward weights, as its manifest declares them."""

    app: str
    weights: dict[str, float]

    @property
    def rewards_topic(self) -> str:
        return f"{self.app}.rewards"

    def route(self, path: str) -> str:
        return f"/v1/apps/{self.app}/{path}"


def reward_weights(cost_per_notification: float) -> dict[str, float]:
    """The reward of the world as the manifest's `reward.metrics`: engaged − cost × sent."""
    return {"engaged": 1.0, "sent": -cost_per_notification}


def read_settings(path: Path, cost_per_notification: float = _DEFAULTS.cost_per_notification) -> AppSettings:
    """The app name and reward weights of the manifest at `path`, checked against the world: its
    actions and features must be the world's, its reward engaged − `cost_per_notification` × sent."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        settings = AppSettings(
            app=str(data["app"]),
            weights={str(k): float(v) for k, v in data["reward"]["metrics"].items()},
        )
        actions = [str(a) for a in data["actions"]["names"]]
        features = [str(f["name"]) for f in data["features"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SimulatorError(
            f"cannot read app, actions.names, features and reward.metrics from manifest {path}: {exc!r}"
        ) from exc
    if sorted(actions) != sorted(ACTIONS):
        raise SimulatorError(f"{path}: actions.names {actions} must be the world's actions {list(ACTIONS)}")
    if sorted(features) != sorted(FEATURE_NAMES):
        raise SimulatorError(f"{path}: features {features} must be the world's {list(FEATURE_NAMES)}")
    expected = reward_weights(cost_per_notification)
    if settings.weights != expected:
        raise SimulatorError(
            f"{path}: reward.metrics {settings.weights} must be the world's reward {expected} "
            "(engaged − cost per notification × sent)"
        )
    return settings


# --- the bodies the app sends (pure) -------------------------------------------------------------
def slot_contexts(sim: NotificationSim, day: Day, slot: int, features: np.ndarray) -> list[dict[str, Any]]:
    """One decision context per user at `slot`: entity, the user-day MDP, the slot as its step."""
    return [
        {
            "entity_id": user,
            "mdp_id": mdp_id_for(user, day.index),
            "sequence_number": slot,
            "context_features": dict(zip(FEATURE_NAMES, map(float, row), strict=True)),
            "possible_actions": list(ACTIONS),
        }
        for user, row in zip(sim.user_ids, features, strict=True)
    ]


def logged_decisions(
    contexts: Sequence[dict[str, Any]], decisions: RuleDecisions, policy: str
) -> list[dict[str, Any]]:
    """The `/decisions/batch` entries for the rule's decisions: each context, the action taken and
    the exact probability the rule took it with, under the rule's label."""
    return [
        {
            **context,
            "policy": policy,
            "action": SEND if send else DONT_SEND,
            "action_probability": float(propensity),
        }
        for context, send, propensity in zip(contexts, decisions.send, decisions.propensity, strict=True)
    ]


def reward_event(request_id: str, engaged: bool, sent: bool, timestamp: datetime) -> dict[str, Any]:
    """One reward event: only the metrics; the manifest's weights make them the reward."""
    return {
        "schema_version": 1,
        "request_id": request_id,
        "timestamp": timestamp.isoformat(),
        "metrics": {"engaged": float(engaged), "sent": float(sent)},
    }


# --- one day ---------------------------------------------------------------------------------------
@dataclass
class DayResult:
    """What the app saw on one day: the JSON line it prints (`summary`)."""

    app: str
    day: int
    users: int
    decisions: int = 0
    total_reward: float = 0.0
    sends: int = 0
    rule_reward: float = float("nan")
    oracle_reward: float = float("nan")
    model_versions: dict[str, int] = field(default_factory=dict)
    reward_by_version: dict[str, float] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)

    def summary(self, request_ids_file: Path | None) -> dict[str, Any]:
        return {
            "app": self.app,
            "day": self.day,
            "users": self.users,
            "decisions": self.decisions,
            "realized_reward": self.total_reward / self.decisions,
            "rule_reward": self.rule_reward,
            "oracle_reward": self.oracle_reward,
            "send_share": self.sends / self.decisions,
            "model_versions": self.model_versions,
            "realized_by_version": {
                version: self.reward_by_version[version] / count
                for version, count in self.model_versions.items()
            },
            "request_ids": len(self.request_ids),
            "request_ids_file": str(request_ids_file) if request_ids_file is not None else None,
        }


def run_day(
    url: str,
    bootstrap: str,
    day_index: int,
    config: NotificationSimConfig,
    *,
    batch: int = 500,
    manifest: Path = MANIFEST_PATH,
    timeout_s: float = 30.0,
) -> DayResult:
    """Play day `day_index` of the users `config` draws: every user, every slot, one decision each."""
    if day_index < 0 or batch < 1:
        raise SimulatorError(f"day must be >= 0 and batch >= 1, got {day_index} and {batch}")
    settings = read_settings(manifest, config.cost_per_notification)
    sim = NotificationSim(config)
    day = sim.start_day(day_index)
    rule = sim.rule()
    rule_rng = np.random.default_rng((config.rule_seed, day_index))  # the rule's draws
    result = DayResult(
        app=settings.app,
        day=day_index,
        users=config.n_users,
        rule_reward=sim.policy_value(day, rule.send_probability),
        oracle_reward=sim.oracle_value(day),
    )
    sent_previous = np.zeros(config.n_users, dtype=bool)
    with (
        RewardProducer(bootstrap, settings.rewards_topic, timeout_s) as producer,
        httpx.Client(base_url=url, timeout=timeout_s) as client,
    ):
        for slot in range(config.slots_per_day):
            features = sim.features(day, slot, sent_previous)
            contexts = slot_contexts(sim, day, slot, features)
            model, canary = _serving_models(client, settings)
            if model is None and canary is None:
                ids, send, versions = _decide_by_rule(
                    client, settings, rule, rule_rng, features, contexts, batch
                )
            else:
                answers = post_batches(client, settings.route("act/batch"), "requests", contexts, batch)
                ids = [a["request_id"] for a in answers]
                send = np.array([a.get("action") == SEND for a in answers])
                versions = [a.get("model_version") for a in answers]
                # A canary beside no model leaves the app the episodes it does not take (`not_served`).
                mine = np.array([a["action_kind"] == NOT_SERVED for a in answers])
                if mine.any():
                    rows = np.flatnonzero(mine)
                    by_rule = _decide_by_rule(
                        client, settings, rule, rule_rng, features[rows], [contexts[i] for i in rows], batch
                    )
                    for i, request_id, sent, version in zip(rows, *by_rule, strict=True):
                        ids[i], send[i], versions[i] = request_id, sent, version
            engaged = sim.draw_engagement(day, slot, send, sent_previous)
            rewards = sim.reward(engaged, send)
            now = datetime.now(UTC)
            for request_id, user_engaged, user_sent in zip(ids, engaged, send, strict=True):
                event = reward_event(request_id, bool(user_engaged), bool(user_sent), now)
                producer.send(event)
            for version, reward in zip(versions, rewards, strict=True):
                result.model_versions[version] = result.model_versions.get(version, 0) + 1
                result.reward_by_version[version] = result.reward_by_version.get(version, 0.0) + float(reward)
            result.request_ids.extend(ids)
            result.total_reward += float(rewards.sum())
            result.sends += int(send.sum())
            result.decisions += len(ids)
            sent_previous = send
    return result


def _decide_by_rule(
    client: httpx.Client,
    settings: AppSettings,
    rule: NotifyQuietUsersRule,
    rng: np.random.Generator,
    features: np.ndarray,
    contexts: list[dict[str, Any]],
    batch: int,
) -> tuple[list[str], np.ndarray, list[str]]:
    """The rule decides these users and `/decisions/batch` logs it: request ids, sends, labels."""
    decisions = rule.decide(features, rng)
    bodies = logged_decisions(contexts, decisions, rule.name)
    logged = post_batches(client, settings.route("decisions/batch"), "decisions", bodies, batch)
    ids = [item["request_id"] for item in logged]
    return ids, decisions.send, [rule.name] * len(ids)


def _serving_models(client: httpx.Client, settings: AppSettings) -> tuple[str | None, str | None]:
    """The model serving deploys now and the canary beside it; (None, None): no model yet, the app
    decides by its rule. With a canary beside no model the app decides the episodes it does not take."""
    route = settings.route("healthz")
    try:
        response = client.get(route)
    except httpx.HTTPError as exc:
        raise SimulatorError(
            f"GET {client.base_url}{route} failed: {exc!r}; is `streamrl up` serving this app's manifest?"
        ) from exc
    if response.status_code not in (200, 503):
        raise SimulatorError(
            f"GET {client.base_url}{route} answered {response.status_code}: {response.text[:500]}"
        )
    health = response.json()
    return health.get("model_version"), (health.get("canary") or {}).get("model_version")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the app's serving address, e.g. http://127.0.0.1:18083")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:19092")
    parser.add_argument("--day", type=int, required=True, help="which day of the users to play (0, 1, …)")
    parser.add_argument("--users", type=int, default=_DEFAULTS.n_users, help="users (default %(default)s)")
    parser.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help="draws the users and each day's world (default %(default)s)",
    )
    parser.add_argument(
        "--rule-seed",
        type=int,
        default=_DEFAULTS.rule_seed,
        help="seeds the rule's draws (default %(default)s)",
    )
    parser.add_argument(
        "--rule-epsilon",
        type=float,
        default=_DEFAULTS.rule_epsilon,
        help="the rule's exploration: P(the other action) is ε/2 (default %(default)s)",
    )
    parser.add_argument(
        "--batch", type=int, default=500, help="decisions per batch request (default %(default)s)"
    )
    parser.add_argument("--manifest", type=Path, default=MANIFEST_PATH, help="the app's manifest")
    parser.add_argument(
        "--request-ids", type=Path, default=None, metavar="FILE", help="write the request ids here"
    )
    args = parser.parse_args(argv)
    try:
        config = NotificationSimConfig(
            n_users=args.users, seed=args.seed, rule_seed=args.rule_seed, rule_epsilon=args.rule_epsilon
        )
        result = run_day(args.url, args.bootstrap, args.day, config, batch=args.batch, manifest=args.manifest)
    except (AppClientError, ValueError) as exc:
        print(f"notifications simulator: {exc}", file=sys.stderr)
        return 1
    if args.request_ids is not None:
        args.request_ids.parent.mkdir(parents=True, exist_ok=True)
        args.request_ids.write_text("".join(f"{r}\n" for r in result.request_ids))
    print(json.dumps(result.summary(args.request_ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
