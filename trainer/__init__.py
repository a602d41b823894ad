"""Off-policy training on timelines, ONNX export and the local model registry.

Entry points: `train_and_register` (train → export → register), `train_dqn`, `export_model`,
`ModelRegistry` (register / get / deploy / rollback) and `OnnxPolicy` (what evaluation and
serving run). The ONNX contract is in `trainer.artifact`; exploration in `trainer.policy`.
"""

from trainer.artifact import DataRange, ModelMetadata
from trainer.config import DqnConfig
from trainer.dqn import QNetwork, TrainingResult, train_dqn
from trainer.errors import (
    CorruptModelError,
    ExportParityError,
    PolicyInputError,
    RegistryError,
    TrainerError,
    TrainingDataError,
)
from trainer.export import check_parity, export_model
from trainer.onnx_policy import OnnxPolicy
from trainer.policy import (
    EpsilonGreedyExploration,
    ExplorationConfig,
    GreedyExploration,
    SoftmaxExploration,
    action_distribution,
)
from trainer.registry import DeploymentEvent, DeploymentKind, DeploymentState, ModelRegistry
from trainer.workflow import code_version, train_and_register

__all__ = [
    "CorruptModelError",
    "DataRange",
    "DeploymentEvent",
    "DeploymentKind",
    "DeploymentState",
    "DqnConfig",
    "EpsilonGreedyExploration",
    "ExplorationConfig",
    "ExportParityError",
    "GreedyExploration",
    "ModelMetadata",
    "ModelRegistry",
    "OnnxPolicy",
    "PolicyInputError",
    "QNetwork",
    "RegistryError",
    "SoftmaxExploration",
    "TrainerError",
    "TrainingDataError",
    "TrainingResult",
    "action_distribution",
    "check_parity",
    "code_version",
    "export_model",
    "train_and_register",
    "train_dqn",
]
