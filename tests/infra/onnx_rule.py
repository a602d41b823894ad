"""Test helper: the notification rule exported as an ONNX model, for tests that need registered models.

The demo no longer needs this (the app logs its own rule through `POST /v1/decisions`); the
deploy/rollback and serve tests only need real registered discrete models to move the pointer
between and to serve. `tests/apps/test_rule_policy.py` checks it against the app's numpy rule.
"""

from __future__ import annotations

import torch
from torch import nn

from apps.notifications import ACTIONS, FEATURE_NAMES, SEND, NotificationSimConfig
from trainer.artifact import ModelMetadata
from trainer.export import export_model
from trainer.policy import EpsilonGreedyExploration
from trainer.registry import ModelRegistry

_ACTIVE_DAYS = FEATURE_NAMES.index("active_days_7d")
_SENT_PREVIOUS = FEATURE_NAMES.index("sent_previous_slot")


class _OnnxRule(nn.Module):
    """Scores 'send' 1 for quiet, not just notified users (0 otherwise), 'dont_send' 0.5."""

    def __init__(self, max_active_days: int):
        super().__init__()
        self.n_features = len(FEATURE_NAMES)
        self.n_actions = len(ACTIONS)
        self.max_active_days = float(max_active_days)

    def forward(self, features: torch.Tensor, possible_mask: torch.Tensor) -> torch.Tensor:
        quiet = features[:, _ACTIVE_DAYS] <= self.max_active_days
        fresh = features[:, _SENT_PREVIOUS] < 0.5
        send_score = (quiet & fresh).to(torch.float32)
        columns = [send_score if action == SEND else torch.full_like(send_score, 0.5) for action in ACTIONS]
        scores = torch.stack(columns, dim=1)
        return torch.where(possible_mask > 0.5, scores, torch.full_like(scores, float("-inf")))


def register_rule_policy(registry: ModelRegistry, config: NotificationSimConfig) -> ModelMetadata:
    """Export the rule with its ε-greedy exploration and register it (not deployed)."""
    onnx_bytes = export_model(_OnnxRule(config.rule_max_active_days).eval(), softmax_temperature=1.0)
    return registry.register(
        onnx_bytes,
        feature_names=list(FEATURE_NAMES),
        actions=list(ACTIONS),
        algorithm="hand_written_rule",
        algorithm_config={"max_active_days": config.rule_max_active_days},
        exploration=EpsilonGreedyExploration(epsilon=config.rule_epsilon),
    )
