"""Tiny real models of every action kind, built with the trainer's own networks and exporters.

Untrained (seeded) networks are enough for serving tests: what is tested is that the propensity
served and logged is the one the exported graph and the served exploration rule give, recomputed
here with numpy from a fresh onnxruntime session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch
from scipy.special import ndtr

from features import NormalizationSpec, fit_normalization
from tests.serving.conftest import ACTIONS, FEATURES
from trainer import GreedyExploration, ModelRegistry, SacConfig, SoftmaxExploration
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    CONTINUOUS_OUTPUTS,
    FEATURES_INPUT,
    MASK_INPUT,
    SCORES_OUTPUT,
)
from trainer.bandits import LinearBandit, LinearThompsonConfig, LinUcbConfig, export_bandit
from trainer.continuous_export import export_continuous_policy
from trainer.parametric_dqn import ParametricDqnConfig, ParametricQNetwork, export_parametric_model
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig
from trainer.sac import GaussianActor

ACTION_FEATURES = ["price", "quality"]
DIMENSIONS = ["torque", "gain"]
ACTION_LOW = [-2.0, 0.0]
ACTION_HIGH = [2.0, 1.0]


@dataclass(frozen=True)
class ExportedKind:
    """ONNX bytes plus the registry arguments of one model; `register` stores a fresh version."""

    onnx_bytes: bytes
    arguments: dict[str, Any] = field(default_factory=dict)

    def register(self, registry: ModelRegistry) -> str:
        return registry.register(self.onnx_bytes, **self.arguments).version

    def session(self) -> ort.InferenceSession:
        return ort.InferenceSession(self.onnx_bytes, providers=["CPUExecutionProvider"])


def _spec(names: list[str], seed: int) -> NormalizationSpec:
    rng = np.random.default_rng(seed)
    return fit_normalization(pd.DataFrame(rng.normal(0.0, 1.0, size=(500, len(names))), columns=names))


def _graph_names(onnx_bytes: bytes) -> dict[str, list[str]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return {
        "input_names": [i.name for i in session.get_inputs()],
        "output_names": [o.name for o in session.get_outputs()],
    }


def linear_bandit(algorithm: str, seed: int, exploration: ExplorationConfig) -> ExportedKind:
    """A LinUCB (`bonus_weight` 1) or linear Thompson (0) model with a random posterior.

    Posterior means are small and widths large enough that Thompson draws pick every arm often.
    """
    spec = _spec(FEATURES, seed)
    rng = np.random.default_rng(seed)
    width = int(spec.output_dim) + 1
    means = rng.normal(0.0, 0.3, size=(len(ACTIONS), width))
    factors = rng.normal(0.0, 0.3, size=(len(ACTIONS), width, width))
    a_inv = factors @ factors.transpose(0, 2, 1) + 0.05 * np.eye(width)
    config = LinUcbConfig(alpha=0.7) if algorithm == "linucb" else LinearThompsonConfig(posterior_scale=0.7)
    bonus = 1.0 if algorithm == "linucb" else 0.0
    network = LinearBandit(spec, means, a_inv, scale=0.7, bonus_weight=bonus)
    onnx_bytes = export_bandit(network, config.softmax_temperature)
    return ExportedKind(
        onnx_bytes,
        {
            "feature_names": FEATURES,
            "actions": ACTIONS,
            "algorithm": algorithm,
            "algorithm_config": config.model_dump(mode="json"),
            "exploration": exploration,
            **_graph_names(onnx_bytes),
        },
    )


def thompson() -> ExportedKind:
    return linear_bandit("linear_thompson", seed=3, exploration=GreedyExploration())


def linucb() -> ExportedKind:
    return linear_bandit("linucb", seed=4, exploration=EpsilonGreedyExploration(epsilon=0.2))


def parametric(seed: int = 5) -> ExportedKind:
    torch.manual_seed(seed)
    network = ParametricQNetwork(_spec(FEATURES, seed), _spec(ACTION_FEATURES, seed + 1), [16])
    with torch.no_grad():  # larger weights: scores that differ clearly between candidates
        for parameter in network.body.parameters():
            parameter.mul_(3.0)
    onnx_bytes = export_parametric_model(network)
    return ExportedKind(
        onnx_bytes,
        {
            "feature_names": FEATURES,
            "actions": [],
            "action_feature_names": ACTION_FEATURES,
            "algorithm": "parametric_dqn",
            "algorithm_config": ParametricDqnConfig(hidden_sizes=[16]).model_dump(mode="json"),
            "exploration": SoftmaxExploration(temperature=0.5, epsilon=0.1),
            "input_names": [FEATURES_INPUT, ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT],
            "output_names": [SCORES_OUTPUT],
        },
    )


def continuous(seed: int = 6) -> ExportedKind:
    torch.manual_seed(seed)
    config = SacConfig(action_low=ACTION_LOW, action_high=ACTION_HIGH, hidden_sizes=[16])
    onnx_bytes = export_continuous_policy(GaussianActor(_spec(FEATURES, seed), config))
    return ExportedKind(
        onnx_bytes,
        {
            "feature_names": FEATURES,
            "actions": DIMENSIONS,
            "algorithm": "sac",
            "algorithm_config": config.model_dump(mode="json"),
            "input_names": [FEATURES_INPUT],
            "output_names": list(CONTINUOUS_OUTPUTS),
        },
    )


# --- independent references (numpy, written out here) -------------------------------------------


def feature_matrix(contexts: list[dict[str, float | None]]) -> np.ndarray:
    return np.array(
        [[np.nan if c.get(n) is None else c[n] for n in FEATURES] for c in contexts], dtype=np.float32
    )


def thompson_reference(mean: np.ndarray, width: np.ndarray, grid: int = 20_001) -> np.ndarray:
    """P(arm a has the largest of independent N(mean_b, width_b²) draws), one row, by a dense grid:
    P(a) = ∫ φ(z) Π_{b≠a} Φ((mean_a + width_a·z − mean_b) / width_b) dz over z in [−10, 10]."""
    z = np.linspace(-10.0, 10.0, grid)
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    out = np.empty(len(mean))
    for a in range(len(mean)):
        x = mean[a] + width[a] * z
        others = np.ones_like(z)
        for b in range(len(mean)):
            if b != a:
                others *= ndtr((x - mean[b]) / width[b])
        out[a] = np.trapezoid(density * others, z)
    return out


def softmax_epsilon(scores: np.ndarray, temperature: float, epsilon: float) -> np.ndarray:
    """softmax(scores / T) mixed with ε-uniform, over one row of finite scores."""
    z = scores.astype(np.float64) / temperature
    e = np.exp(z - z.max())
    return (1.0 - epsilon) * e / e.sum() + epsilon / len(scores)


def squashed_gaussian_log_density(
    action: np.ndarray, loc: np.ndarray, log_std: np.ndarray, low: np.ndarray, high: np.ndarray
) -> float:
    """log density (env units) of a = low + (tanh(u) + 1)/2·(high − low), u ~ N(loc, exp(log_std)²)."""
    a = np.asarray(action, np.float64)
    half = (np.asarray(high, np.float64) - np.asarray(low, np.float64)) / 2
    t = (a - low) / half - 1.0
    u = np.arctanh(t)
    std = np.exp(np.asarray(log_std, np.float64))
    normal = -0.5 * ((u - loc) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return float(np.sum(normal - np.log(1.0 - t**2) - np.log(half)))


def session_outputs(kind: ExportedKind, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return kind.session().run(names, feeds)


def discrete_feeds(
    contexts: list[dict[str, float | None]], possible: list[list[str]]
) -> dict[str, np.ndarray]:
    mask = np.array([[1.0 if a in p else 0.0 for a in ACTIONS] for p in possible], dtype=np.float32)
    return {FEATURES_INPUT: feature_matrix(contexts), MASK_INPUT: mask}
