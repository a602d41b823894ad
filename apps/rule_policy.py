"""The app's day-0 policy: a hand-written threshold rule with ε-greedy exploration, in numpy.

Until a model is approved the app decides with this rule itself and logs every decision, with
the exact probability it was taken with, through serving's log-only `POST /v1/decisions/batch`. The
decisions reach the same topic, timelines and CPE as a served model's, so the rule's logs are
training and evaluation data like any other; no model has to be built to stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

RULE_POLICY = "hand-written-rule"  # the `policy` label its decisions are logged under (model_version)


@dataclass(frozen=True)
class RuleDecisions:
    """One batch of the rule's decisions: what it chose and the probability it chose it with."""

    send: np.ndarray  # bool per user
    propensity: np.ndarray  # P(the chosen action) per user, in (0, 1]


@dataclass(frozen=True)
class NotifyQuietUsersRule:
    """Send to users active on at most `max_active_days` of the last 7 and not notified in the
    previous slot; otherwise don't. With probability `epsilon` the action is uniform instead.

    So P(send) = 1 − ε/2 where the greedy choice is 'send' and ε/2 elsewhere. A missing feature
    (NaN) fails its comparison and counts as 'do not send', the cautious choice.
    `feature_names` is the column order of the feature matrices the rule is given.
    """

    max_active_days: float
    epsilon: float
    feature_names: Sequence[str]
    name: str = RULE_POLICY
    _active_days: int = field(init=False, repr=False)
    _sent_previous: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"rule epsilon must be in [0, 1], got {self.epsilon}")
        for column in ("active_days_7d", "sent_previous_slot"):
            if column not in self.feature_names:
                raise ValueError(
                    f"the rule reads feature {column!r}, missing from feature_names {list(self.feature_names)}"
                )
        object.__setattr__(self, "_active_days", list(self.feature_names).index("active_days_7d"))
        object.__setattr__(self, "_sent_previous", list(self.feature_names).index("sent_previous_slot"))

    def greedy_send(self, features: np.ndarray) -> np.ndarray:
        """The rule without exploration: True where it sends, per row of `features`."""
        quiet = features[:, self._active_days] <= self.max_active_days
        fresh = features[:, self._sent_previous] < 0.5
        return quiet & fresh

    def send_probability(self, features: np.ndarray) -> np.ndarray:
        """P(send) per row under ε-greedy exploration over the two actions."""
        return np.where(self.greedy_send(features), 1.0 - self.epsilon / 2.0, self.epsilon / 2.0)

    def decide(self, features: np.ndarray, rng: np.random.Generator) -> RuleDecisions:
        """Draw one decision per row and return it with its exact propensity."""
        p_send = self.send_probability(features)
        send = rng.random(len(p_send)) < p_send
        return RuleDecisions(send=send, propensity=np.where(send, p_send, 1.0 - p_send))
