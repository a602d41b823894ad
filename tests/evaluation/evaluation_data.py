"""Synthetic logged data with computable truth for tests/evaluation, and a hand-built ONNX policy.

Bandit: x1 ~ U(-1, 1), x2 noise (missing in 20% of rows); E[r | x, a] = x1 for `up`, −x1 for
`down`, 0.2 for `stay`; rewards have an offset of 2 so the logged value is positive. The
logging policy prefers `stay` (propensities 0.2 / 0.2 / 0.6). A linear "oracle" ONNX model
with Q = E[r | x, a] is the optimal policy, so its true value under any exploration is known.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch
from torch import nn

from features import NormalizationSpec, fit_normalization, frame_from_feature_maps
from trainer import EpsilonGreedyExploration, ExplorationConfig, ModelMetadata, ModelRegistry
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, PROBS_OUTPUT, Q_OUTPUT

ACTIONS = ["up", "down", "stay"]
LOGGING_PROBS = np.array([0.2, 0.2, 0.6])
OFFSET = 2.0
_T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def expected_reward(x1: np.ndarray) -> np.ndarray:
    """E[r | x, a] as [N, 3] in ACTIONS order."""
    x1 = np.asarray(x1, dtype=np.float64)
    return np.stack([x1, -x1, np.full_like(x1, 0.2)], axis=1) + OFFSET


def make_bandit_timelines(n: int, seed: int, noise: float = 0.3) -> pd.DataFrame:
    """One-step MDPs in the timeline layout of docs/architecture.md."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-1.0, 1.0, n)
    x2 = rng.normal(5.0, 2.0, n)
    action = rng.choice(3, size=n, p=LOGGING_PROBS)
    reward = expected_reward(x1)[np.arange(n), action] + rng.normal(0.0, noise, n)
    has_x2 = rng.random(n) >= 0.2
    states = [
        {"x1": float(a), "x2": float(b)} if h else {"x1": float(a)}
        for a, b, h in zip(x1, x2, has_x2, strict=True)
    ]
    return pd.DataFrame(
        {
            "mdp_id": [f"u{i}-s{seed}" for i in range(n)],
            "request_id": [f"r{i}-s{seed}" for i in range(n)],
            "entity_id": [f"u{i}" for i in range(n)],
            "sequence_number": np.zeros(n, dtype=np.int64),
            "sequence_number_ordinal": np.ones(n, dtype=np.int64),
            "timestamp": pd.Timestamp(_T0) + pd.to_timedelta(np.arange(n), unit="s"),
            "ds": "2026-11-23",
            "state_features": states,
            "action": [ACTIONS[a] for a in action],
            "action_probability": LOGGING_PROBS[action],
            "reward": reward,
            "reward_observed": True,
            "metrics": [{} for _ in range(n)],
            "possible_actions": [list(ACTIONS) for _ in range(n)],
            "next_state_features": [{} for _ in range(n)],
            "next_action": None,
            "possible_next_actions": [[] for _ in range(n)],
            "time_diff": np.zeros(n, dtype=np.int64),
            "time_since_first": np.zeros(n, dtype=np.int64),
            "not_terminal": False,
            "model_version": "logging-v0",
        }
    )


def true_value(weights: np.ndarray, epsilon: float, n: int = 400_000, seed: int = 99) -> float:
    """Value of the linear policy Q = x @ weights served ε-greedily, by Monte Carlo on fresh contexts."""
    x1 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
    q = np.stack([x1, np.zeros_like(x1)], axis=1) @ weights[:2] + weights[2]
    probs = (1.0 - epsilon) * np.eye(q.shape[1])[q.argmax(axis=1)] + epsilon / q.shape[1]  # ε-greedy
    return float(np.mean(np.sum(probs * expected_reward(x1), axis=1)))


class _LinearPolicy(nn.Module):
    """Q = [x1, x2] @ W + b with NaN → 0 and impossible actions at −inf; softmax head for the contract."""

    def __init__(self, weights: np.ndarray):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(weights[:2], dtype=torch.float32), requires_grad=False)
        self.b = nn.Parameter(torch.as_tensor(weights[2], dtype=torch.float32), requires_grad=False)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.where(torch.isnan(features), torch.zeros_like(features), features)
        q = x @ self.w + self.b
        q = torch.where(mask > 0.5, q, torch.full_like(q, float("-inf")))
        return q, torch.softmax(q, dim=1)


# Rows: weight of x1, weight of x2, bias; columns: ACTIONS.
ORACLE_WEIGHTS = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
ANTI_WEIGHTS = -ORACLE_WEIGHTS
# Softmax(Q) with Q = log(logging probabilities) at temperature 1 serves exactly the logging policy.
LOGGING_WEIGHTS = np.vstack([np.zeros((2, 3)), np.log(LOGGING_PROBS)[None, :]])


def linear_policy_onnx(weights: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        _LinearPolicy(weights).eval(),
        (torch.zeros(2, 2), torch.ones(2, 3)),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=[FEATURES_INPUT, MASK_INPUT],
        output_names=[Q_OUTPUT, PROBS_OUTPUT],
        dynamic_axes={name: {0: "batch"} for name in (FEATURES_INPUT, MASK_INPUT, Q_OUTPUT, PROBS_OUTPUT)},
    )
    return buffer.getvalue()


def register_linear_policy(
    registry: ModelRegistry, weights: np.ndarray, epsilon: float, exploration: ExplorationConfig | None = None
) -> ModelMetadata:
    return registry.register(
        linear_policy_onnx(weights),
        feature_names=["x1", "x2"],
        actions=list(ACTIONS),
        algorithm="fixed_linear",
        exploration=exploration or EpsilonGreedyExploration(epsilon=epsilon),
    )


def fit_spec(timelines: pd.DataFrame) -> NormalizationSpec:
    return fit_normalization(frame_from_feature_maps(list(timelines["state_features"])))
