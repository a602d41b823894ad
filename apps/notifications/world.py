"""A simulated app modeled on Horizon's notification use case.

Each user has a hidden activity level (how likely they engage on their own) and a
hidden sensitivity to notifications (how much a notification changes that; negative
for users who find them annoying). Every day each user gets `slots_per_day` decision
points; the app may send a notification or not. Sending right after a previous send
is much less effective (fatigue), which makes the problem sequential.

Reward per decision = engaged (0/1) − cost_per_notification × sent.

The app observes only noisy proxies of the hidden traits (active days in the last week,
click-through rate of past notifications), so a learned policy can approach — but not
reach — the oracle, which knows the hidden traits and plans each day optimally.

Everything is seeded: the population by `seed`, day k's observations and engagement draws by
(`seed`, k), so any day of the same users can be replayed. Plain numpy and pydantic: the app's
simulator (simulator.py, beside this file) imports it and no streamrl stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from apps.rule_policy import NotifyQuietUsersRule

SEND = "send"
DONT_SEND = "dont_send"
ACTIONS: tuple[str, ...] = (DONT_SEND, SEND)
FEATURE_NAMES: tuple[str, ...] = (
    "active_days_7d",
    "notif_ctr_30d",
    "tenure_days",
    "slot",
    "sent_previous_slot",
)

# A policy maps a [users, features] matrix (FEATURE_NAMES order) to P(send) per user.
SendProbability = Callable[[np.ndarray], np.ndarray]


class NotificationSimConfig(BaseModel):
    """Knobs of the simulated population and of the day-0 hand-written policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(4000, ge=1)
    slots_per_day: int = Field(4, ge=1, le=24)
    cost_per_notification: float = Field(0.05, ge=0.0)
    fatigue_factor: float = Field(0.5, ge=0.0, le=1.0)
    # Sensitivity = intercept − slope × activity + noise: notifications help quiet users most.
    sensitivity_intercept: float = 0.4
    sensitivity_activity_slope: float = 0.9
    sensitivity_noise: float = Field(0.5, ge=0.0)
    seed: int = 7
    # The hand-written rule: notify users active on at most this many of the last 7 days.
    rule_max_active_days: int = Field(3, ge=0, le=7)
    rule_epsilon: float = Field(0.2, ge=0.0, le=1.0)
    rule_seed: int = 1234  # the app's draws when it decides by the rule (day d: seed (rule_seed, d))


@dataclass(frozen=True)
class Population:
    """Hidden traits (what the oracle knows) and stable observed traits."""

    activity: np.ndarray  # base engagement probability per slot
    sensitivity: np.ndarray  # change in engagement probability from a fresh notification
    tenure_days: np.ndarray


@dataclass(frozen=True)
class Day:
    """One simulated day: the per-user observations that stay fixed during the day."""

    index: int
    active_days_7d: np.ndarray
    notif_ctr_30d: np.ndarray


def mdp_id_for(user_id: str, day_index: int) -> str:
    """One MDP per user and day: the fatigue state does not carry over midnight."""
    return f"{user_id}:day{day_index}"


SLOT_ACTIVITY = np.array([0.8, 1.1, 1.2, 0.9])


class NotificationSim:
    """The environment: contexts, engagement draws, and exact expected values of policies."""

    def __init__(self, config: NotificationSimConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        n = config.n_users
        activity = rng.beta(2.0, 3.0, size=n)
        sensitivity = (
            config.sensitivity_intercept
            - config.sensitivity_activity_slope * activity
            + rng.normal(0.0, config.sensitivity_noise, size=n)
        )
        tenure = np.round(rng.lognormal(mean=5.0, sigma=1.0, size=n), 1)
        self.population = Population(activity=activity, sensitivity=sensitivity, tenure_days=tenure)
        self.user_ids = [f"user-{i:06d}" for i in range(n)]

    # --- observations -------------------------------------------------------------------------
    def start_day(self, index: int) -> Day:
        """Draw the day's observable summaries (noisy views of the hidden traits)."""
        rng = np.random.default_rng((self.config.seed, index, 1))
        p = self.population
        active_days = rng.binomial(7, np.clip(p.activity * 1.5, 0.0, 1.0)).astype(float)
        ctr = np.clip(0.3 + 1.2 * p.sensitivity + rng.normal(0.0, 0.04, size=p.activity.size), 0.0, 1.0)
        return Day(index=index, active_days_7d=active_days, notif_ctr_30d=np.round(ctr, 4))

    def features(self, day: Day, slot: int, sent_previous: np.ndarray) -> np.ndarray:
        """Context matrix [users, FEATURE_NAMES] at one slot."""
        n = self.config.n_users
        return np.column_stack(
            [
                day.active_days_7d,
                day.notif_ctr_30d,
                self.population.tenure_days,
                np.full(n, float(slot % len(SLOT_ACTIVITY))),
                sent_previous.astype(float),
            ]
        )

    # --- dynamics --------------------------------------------------------------------------------
    def engage_probability(self, slot: int, send: np.ndarray, sent_previous: np.ndarray) -> np.ndarray:
        p = self.population
        base = np.clip(p.activity * SLOT_ACTIVITY[slot % len(SLOT_ACTIVITY)], 0.0, 0.95)
        fatigue = np.where(sent_previous, self.config.fatigue_factor, 1.0)
        lift = p.sensitivity * (1.0 - base) * fatigue
        return np.clip(base + send * lift, 0.0, 1.0)

    def expected_reward(self, slot: int, send: np.ndarray, sent_previous: np.ndarray) -> np.ndarray:
        send = send.astype(float)
        prob = self.engage_probability(slot, send, sent_previous)
        return prob - self.config.cost_per_notification * send

    def draw_engagement(self, day: Day, slot: int, send: np.ndarray, sent_previous: np.ndarray) -> np.ndarray:
        """Whether each user engaged in one slot (Bernoulli; seeded by the day and slot)."""
        rng = np.random.default_rng((self.config.seed, day.index, 2, slot))
        prob = self.engage_probability(slot, send.astype(float), sent_previous)
        return rng.random(prob.size) < prob

    def reward(self, engaged: np.ndarray, send: np.ndarray) -> np.ndarray:
        """Reward per decision: engaged (0/1) − cost_per_notification × sent."""
        return engaged.astype(float) - self.config.cost_per_notification * send.astype(float)

    def draw_rewards(self, day: Day, slot: int, send: np.ndarray, sent_previous: np.ndarray) -> np.ndarray:
        """Realized rewards for one slot (Bernoulli engagement minus notification cost)."""
        return self.reward(self.draw_engagement(day, slot, send, sent_previous), send)

    # --- policies and their exact values ---------------------------------------------------------
    def rule(self, *, epsilon: float | None = None) -> NotifyQuietUsersRule:
        """The app's day-0 hand-written rule as configured (ε = `rule_epsilon` unless given)."""
        return NotifyQuietUsersRule(
            max_active_days=self.config.rule_max_active_days,
            epsilon=self.config.rule_epsilon if epsilon is None else epsilon,
            feature_names=FEATURE_NAMES,
        )

    def rule_send_probability(self, features: np.ndarray, *, epsilon: float | None = None) -> np.ndarray:
        """P(send) of the day-0 hand-written rule (`rule()`): notify users with few active days unless
        notified in the previous slot, with ε-uniform exploration."""
        return self.rule(epsilon=epsilon).send_probability(features)

    def policy_value(self, day: Day, send_probability: SendProbability) -> float:
        """Exact expected reward per decision of a (stochastic) policy on this day's users.

        Tracks each user's probability of having been notified in the previous slot, so the
        fatigue dynamics are accounted for without sampling noise.
        """
        n = self.config.n_users
        p_prev = np.zeros(n)
        total = np.zeros(n)
        for slot in range(self.config.slots_per_day):
            sent0, sent1 = np.zeros(n, bool), np.ones(n, bool)
            q_send_given_prev = send_probability(self.features(day, slot, sent1))
            q_send_given_fresh = send_probability(self.features(day, slot, sent0))
            value_prev = q_send_given_prev * self.expected_reward(slot, np.ones(n), sent1) + (
                1 - q_send_given_prev
            ) * self.expected_reward(slot, np.zeros(n), sent1)
            value_fresh = q_send_given_fresh * self.expected_reward(slot, np.ones(n), sent0) + (
                1 - q_send_given_fresh
            ) * self.expected_reward(slot, np.zeros(n), sent0)
            total += p_prev * value_prev + (1 - p_prev) * value_fresh
            p_prev = p_prev * q_send_given_prev + (1 - p_prev) * q_send_given_fresh
        return float(total.sum() / (n * self.config.slots_per_day))

    def oracle_value(self, day: Day) -> float:
        """Best achievable expected reward per decision: dynamic programming on hidden traits."""
        n = self.config.n_users
        slots = self.config.slots_per_day
        future = np.zeros((n, 2))  # value-to-go indexed by sent_previous
        for slot in reversed(range(slots)):
            new = np.zeros((n, 2))
            for prev in (0, 1):
                sent_prev = np.full(n, bool(prev))
                v_send = self.expected_reward(slot, np.ones(n), sent_prev) + future[:, 1]
                v_skip = self.expected_reward(slot, np.zeros(n), sent_prev) + future[:, 0]
                new[:, prev] = np.maximum(v_send, v_skip)
            future = new
        return float(future[:, 0].sum() / (n * slots))
