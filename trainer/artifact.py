"""What a trained model is on disk: an ONNX graph plus JSON metadata. Never a pickle.

The ONNX contract every algorithm's export follows (discrete actions):
  inputs   `features`               float32 [batch, n_features]  raw values, NaN = missing
           `possible_actions_mask`  float32 [batch, n_actions]   1 = possible, 0 = not
  outputs  `q_values`               float32 [batch, n_actions]   impossible actions = -inf
           `action_probabilities`   float32 [batch, n_actions]   softmax(q / temperature) over possible
Normalization happens inside the graph, so callers pass raw features in
`metadata.feature_names` order and actions in `metadata.actions` order.

Every contract below is also one entry of `trainer.signatures.SERVING_SIGNATURES` (keyed by
`ActionKind`), which the registry holds a model to before it deploys it (`check_signature`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import ActionKind
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig

FEATURES_INPUT = "features"
MASK_INPUT = "possible_actions_mask"
Q_OUTPUT = "q_values"
PROBS_OUTPUT = "action_probabilities"

# The ONNX contract of continuous-action policies (SAC, TD3; `trainer.continuous_export`):
#   inputs   `features`        float32 [batch, n_features]  raw values, NaN = missing
#   outputs  `action_mean`     float32 [batch, action_dim]  greedy action in env units, within [low, high]
#            `action_loc`      float32 [batch, action_dim]  mean of the pre-squash Gaussian (unit space)
#            `action_log_std`  float32 [batch, action_dim]  log std of the pre-squash Gaussian
# `action_mean = low + (tanh(action_loc) + 1) / 2 * (high - low)`. Exploring callers sample
# `low + (tanh(action_loc + exp(action_log_std) * eps) + 1) / 2 * (high - low)`, eps ~ N(0, I),
# in float64 strictly inside (low, high) (`trainer.policies.continuous.sample_tanh_gaussian`);
# `tanh_gaussian_log_density` gives that sample's log density (change of variables included).
# Bounds are in `metadata.algorithm_config` (`action_low`, `action_high`); action order is
# `metadata.actions` (one name per action dimension).
ACTION_MEAN_OUTPUT = "action_mean"
ACTION_LOC_OUTPUT = "action_loc"
ACTION_LOG_STD_OUTPUT = "action_log_std"
CONTINUOUS_OUTPUTS = (ACTION_MEAN_OUTPUT, ACTION_LOC_OUTPUT, ACTION_LOG_STD_OUTPUT)

# Linear bandits (`trainer.bandits`: linucb, linear_thompson) follow the discrete contract and add:
#   outputs  `reward_mean`        float32 [batch, n_actions]  posterior mean reward xᵀμ_a (not masked)
#            `exploration_width`  float32 [batch, n_actions]  scale·sqrt(xᵀA_a⁻¹x): the UCB bonus (linucb,
#                                                             q_values = reward_mean + width) or the posterior
#                                                             std (linear_thompson: sample mean + width·N(0,1))
REWARD_MEAN_OUTPUT = "reward_mean"
EXPLORATION_WIDTH_OUTPUT = "exploration_width"

# The ONNX contract of parametric-action Q models (`trainer.parametric_dqn`):
#   inputs   `features`         float32 [batch, n_features]                    raw state, NaN = missing
#            `action_features`  float32 [batch, n_candidates, n_action_features] raw, NaN = missing/padding
#            `candidate_mask`   float32 [batch, n_candidates]                  1 = real candidate, 0 = padding
#   outputs  `scores`           float32 [batch, n_candidates]                  Q(s, a); padding = -inf
# Both normalizations (state and action features) are inside the graph; action feature order is
# `metadata.algorithm_config["action_feature_names"]`. n_candidates may differ per call.
ACTION_FEATURES_INPUT = "action_features"
CANDIDATE_MASK_INPUT = "candidate_mask"
SCORES_OUTPUT = "scores"


class DataRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: datetime | None = None
    end: datetime | None = None
    rows: int = 0


class ModelMetadata(BaseModel):
    """Everything needed to serve, evaluate and audit one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    version: str
    created_at: datetime
    algorithm: str
    action_kind: ActionKind = ActionKind.DISCRETE
    algorithm_config: dict[str, Any] = Field(default_factory=dict)
    onnx_file: str = "model.onnx"
    onnx_sha256: str
    input_names: list[str] = Field(default_factory=lambda: [FEATURES_INPUT, MASK_INPUT])
    output_names: list[str] = Field(default_factory=lambda: [Q_OUTPUT, PROBS_OUTPUT])
    feature_names: list[str]
    actions: list[str]
    exploration: ExplorationConfig = Field(default_factory=EpsilonGreedyExploration)
    normalization_spec_version: str | None = None
    normalization_spec_sha256: str | None = None
    # Parametric actions only: the candidates' feature names (input order) and their spec's hash.
    action_feature_names: list[str] | None = None
    action_normalization_spec_sha256: str | None = None
    data_range: DataRange = Field(default_factory=DataRange)
    training_metrics: dict[str, float] = Field(default_factory=dict)
    code_version: str = "unknown"

    @model_validator(mode="before")
    @classmethod
    def _kind_of_older_metadata(cls, data: Any) -> Any:
        """Metadata written before `action_kind` existed: the kind follows from the graph's names."""
        if isinstance(data, dict) and "action_kind" not in data:
            outputs = data.get("output_names") or []
            inputs = data.get("input_names") or []
            if ACTION_MEAN_OUTPUT in outputs:
                data = {**data, "action_kind": ActionKind.CONTINUOUS}
            elif ACTION_FEATURES_INPUT in inputs:
                data = {**data, "action_kind": ActionKind.PARAMETRIC}
        return data
