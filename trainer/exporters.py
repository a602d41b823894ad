"""One exporter per algorithm family: (training result, timelines, config) → `ExportedModel`.

`trainer.algorithms.EXPORT_FUNCTIONS` names which one each algorithm type uses. Every exporter
checks its graph against PyTorch on up to 64 real training rows plus a synthetic batch with NaNs
(and masked actions or padded candidates where the kind has them) before handing the bytes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from features import build_feature_matrix
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    CONTINUOUS_OUTPUTS,
    FEATURES_INPUT,
    MASK_INPUT,
    PROBS_OUTPUT,
    Q_OUTPUT,
    SCORES_OUTPUT,
)
from trainer.bandits import (
    BanditResult,
    LinearThompsonConfig,
    LinUcbConfig,
    NeuralBanditConfig,
    export_bandit,
)
from trainer.config import DqnConfig
from trainer.continuous import ContinuousConfig, ContinuousTrainingResult
from trainer.continuous_export import export_continuous_policy, parity_features
from trainer.data import build_possible_mask, feature_maps
from trainer.dqn import TrainingResult
from trainer.export import export_model, parity_sample
from trainer.parametric_data import candidate_tensor
from trainer.parametric_dqn import ParametricDqnConfig, ParametricTrainingResult, export_parametric_model

PARITY_ROWS = 64


@dataclass(frozen=True)
class ExportedModel:
    """An exported graph, the ONNX contract it follows (see `trainer.artifact`) and what the
    registry records beside it for its kind (parametric: the candidates' feature names and spec)."""

    onnx_bytes: bytes
    input_names: list[str]
    output_names: list[str]
    action_feature_names: list[str] | None = None
    action_normalization_spec_sha256: str | None = None


def export_q_network(result: TrainingResult, timelines: pd.DataFrame, config: DqnConfig) -> ExportedModel:
    """dqn, cql: the discrete contract (`features`, `possible_actions_mask` → `q_values`, probabilities)."""
    features, mask = _discrete_rows(timelines, result.feature_names, result.actions)
    synthetic_features, synthetic_mask = parity_sample(
        len(result.feature_names), len(result.actions), seed=config.seed
    )
    onnx_bytes = export_model(
        result.network,
        config.softmax_temperature,
        np.concatenate([features, synthetic_features]),
        np.concatenate([mask, synthetic_mask]),
    )
    return ExportedModel(onnx_bytes, [FEATURES_INPUT, MASK_INPUT], [Q_OUTPUT, PROBS_OUTPUT])


def export_bandit_model(
    result: BanditResult,
    timelines: pd.DataFrame,
    config: LinUcbConfig | LinearThompsonConfig | NeuralBanditConfig,
) -> ExportedModel:
    """linucb, linear_thompson, neural_bandit: the discrete contract; linear bandits add
    `reward_mean` and `exploration_width` (`trainer.bandits.export_bandit` adds its own NaN batch)."""
    features, mask = _discrete_rows(timelines, result.feature_names, result.actions)
    onnx_bytes = export_bandit(result.network, config.softmax_temperature, features, mask)
    return ExportedModel(onnx_bytes, *_graph_names(onnx_bytes))


def export_actor(
    result: ContinuousTrainingResult, timelines: pd.DataFrame, config: ContinuousConfig
) -> ExportedModel:
    """sac, td3: the continuous contract (`features` → `action_mean`, `action_loc`, `action_log_std`)."""
    features = np.concatenate(
        [
            real_features(timelines, result.feature_names),
            parity_features(len(result.feature_names), seed=config.seed),
        ]
    )
    onnx_bytes = export_continuous_policy(result.network, features)
    return ExportedModel(onnx_bytes, [FEATURES_INPUT], list(CONTINUOUS_OUTPUTS))


def export_parametric_q_network(
    result: ParametricTrainingResult, timelines: pd.DataFrame, config: ParametricDqnConfig
) -> ExportedModel:
    """parametric_dqn: the parametric contract (`features`, `action_features`, `candidate_mask` →
    `scores`), checked on the real candidate sets too; records the candidates' feature names."""
    head = timelines.head(PARITY_ROWS)
    candidates, mask = candidate_tensor(head["possible_action_features"], result.action_feature_names)
    onnx_bytes = export_parametric_model(
        result.network, real_features(head, result.feature_names), candidates, mask, seed=config.seed
    )
    return ExportedModel(
        onnx_bytes,
        [FEATURES_INPUT, ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT],
        [SCORES_OUTPUT],
        action_feature_names=list(result.action_feature_names),
        action_normalization_spec_sha256=result.action_spec.content_sha256,
    )


def real_features(timelines: pd.DataFrame, feature_names: list[str], rows: int = PARITY_ROWS) -> np.ndarray:
    """float32 [≤ rows, n_features] raw state features of the first training rows (NaN = missing)."""
    head = timelines.head(rows)
    return np.asarray(build_feature_matrix(feature_maps(head["state_features"]), feature_names), np.float32)


def _discrete_rows(
    timelines: pd.DataFrame, feature_names: list[str], actions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Raw features and possible-action masks of up to `PARITY_ROWS` real training rows."""
    head = timelines.head(PARITY_ROWS)
    mask, _ = build_possible_mask(head["possible_actions"], actions)
    return real_features(head, feature_names), mask


def _graph_names(onnx_bytes: bytes) -> tuple[list[str], list[str]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
