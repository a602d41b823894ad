"""Off-policy training on timelines, ONNX export and the local model registry.

Entry points: `run_training` (one run from its YAML `TrainRunConfig`, single process or
under torchrun), `train_and_register` (train → export → register), `train_dqn`, `export_model`,
`ModelRegistry` (register / get / deploy / rollback) and `load_policy` / `load_registered_policy`
(the served policy of a model's action kind, `POLICY_TYPES`: what evaluation and serving run;
`OnnxPolicy` is the discrete one). The ONNX contract is in `trainer.artifact`; exploration in `trainer.policy`.
"""

from trainer.algorithms import TRAIN_FUNCTIONS, AlgorithmConfig, UnknownAlgorithmError, train_function
from trainer.artifact import DataRange, ModelMetadata
from trainer.checkpoint import CheckpointConfig, CheckpointError
from trainer.config import DqnConfig
from trainer.continuous import ContinuousActor, ContinuousTrainingResult, train_continuous
from trainer.continuous_export import ContinuousOnnxPolicy, export_continuous_policy
from trainer.cql import CqlConfig
from trainer.distributed import DistributedConfig, DistributedContext, DistributedError
from trainer.dqn import QNetwork, TrainingResult, train_dqn
from trainer.errors import (
    CorruptModelError,
    ExportParityError,
    PolicyInputError,
    RegistryError,
    SignatureMismatchError,
    TrainerError,
    TrainingDataError,
)
from trainer.export import check_parity, export_model
from trainer.onnx_policy import (
    POLICY_TYPES,
    ContinuousPolicy,
    DiscretePolicy,
    OnnxPolicy,
    ParametricPolicy,
    PolicyOutputError,
    ServedPolicy,
    load_policy,
    load_registered_policy,
)
from trainer.policies.continuous import sample_tanh_gaussian, tanh_gaussian_log_density
from trainer.policy import (
    EpsilonGreedyExploration,
    ExplorationConfig,
    GreedyExploration,
    SoftmaxExploration,
    action_distribution,
)
from trainer.registry import (
    CanaryState,
    DeploymentEvent,
    DeploymentKind,
    DeploymentState,
    ModelRegistry,
    canary_takes,
)
from trainer.run_config import RunConfigError, TrainRunConfig, load_run_config
from trainer.sac import SacConfig, train_sac
from trainer.td3 import Td3Config, train_td3
from trainer.workflow import ExportedModel, code_version, export_trained, run_training, train_and_register

__all__ = [
    "POLICY_TYPES",
    "TRAIN_FUNCTIONS",
    "AlgorithmConfig",
    "CheckpointConfig",
    "CheckpointError",
    "ContinuousActor",
    "ContinuousOnnxPolicy",
    "ContinuousPolicy",
    "ContinuousTrainingResult",
    "CorruptModelError",
    "CqlConfig",
    "DataRange",
    "CanaryState",
    "DeploymentEvent",
    "DeploymentKind",
    "DeploymentState",
    "DiscretePolicy",
    "DistributedConfig",
    "DistributedContext",
    "DistributedError",
    "DqnConfig",
    "EpsilonGreedyExploration",
    "ExplorationConfig",
    "ExportParityError",
    "ExportedModel",
    "GreedyExploration",
    "ModelMetadata",
    "ModelRegistry",
    "canary_takes",
    "OnnxPolicy",
    "ParametricPolicy",
    "PolicyInputError",
    "PolicyOutputError",
    "SignatureMismatchError",
    "QNetwork",
    "RegistryError",
    "RunConfigError",
    "SacConfig",
    "ServedPolicy",
    "SoftmaxExploration",
    "Td3Config",
    "TrainRunConfig",
    "TrainerError",
    "TrainingDataError",
    "TrainingResult",
    "UnknownAlgorithmError",
    "action_distribution",
    "check_parity",
    "code_version",
    "export_continuous_policy",
    "export_model",
    "export_trained",
    "load_policy",
    "load_registered_policy",
    "load_run_config",
    "run_training",
    "sample_tanh_gaussian",
    "tanh_gaussian_log_density",
    "train_and_register",
    "train_continuous",
    "train_dqn",
    "train_function",
    "train_sac",
    "train_td3",
]
