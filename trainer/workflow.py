"""Train → export → register: `train_and_register` (in-memory timelines, the nightly refresh) and
`run_training` (one run from its YAML config, single process or under torchrun)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from features import (
    NormalizationSpec,
    build_feature_matrix,
    fit_normalization,
    frame_from_feature_maps,
    load_spec,
    save_spec,
)
from stream import load_timelines
from trainer.algorithms import AlgorithmConfig, train_function
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    CONTINUOUS_OUTPUTS,
    FEATURES_INPUT,
    MASK_INPUT,
    PROBS_OUTPUT,
    Q_OUTPUT,
    SCORES_OUTPUT,
    ModelMetadata,
)
from trainer.bandits import BanditResult, export_bandit
from trainer.continuous import ContinuousActor, ContinuousTrainingResult
from trainer.continuous_export import export_continuous_policy, parity_features
from trainer.data import build_possible_mask, feature_maps
from trainer.distributed import open_process_group
from trainer.dqn import StepHook, TrainingResult
from trainer.errors import TrainingDataError
from trainer.export import export_model, parity_sample
from trainer.parametric_dqn import ParametricTrainingResult, export_parametric_model
from trainer.policy import ExplorationConfig
from trainer.registry import ModelRegistry
from trainer.run_config import TrainRunConfig


def train_and_register(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: AlgorithmConfig,
    registry: ModelRegistry,
    log_dir: Path,
    exploration: ExplorationConfig,
) -> ModelMetadata:
    """Train `config`'s algorithm on `timelines`, export it (parity-checked on real rows too), register it.

    Registering does not deploy: the evaluation gate decides that.
    """
    result = train_function(config.type)(timelines, spec, actions, config, log_dir)
    return _export_and_register(result, timelines, spec, config, registry, exploration)


def run_training(config: TrainRunConfig, *, on_step: StepHook | None = None) -> ModelMetadata | None:
    """Run one training run from its config: load data and spec, train, export, register.

    Under torchrun every process trains its shard; only rank 0 registers and gets the metadata
    (the others return None). Resumes from the newest checkpoint when one is configured.
    """
    algorithm = config.algorithm
    with open_process_group(config.distributed, algorithm.device) as context:
        timelines = load_timelines(config.data.output_dir, config.data.start, config.data.end)
        if len(timelines) == 0:
            raise TrainingDataError(
                f"no timelines under {config.data.output_dir} in [{config.data.start}, {config.data.end}); "
                "check data.output_dir and the time range (is the stream job writing there?)"
            )
        spec = _normalization_spec(config, timelines, write=context.is_main)
        train = train_function(algorithm.type)
        result = train(
            timelines,
            spec,
            config.actions,
            algorithm,
            config.output.log_dir,
            checkpoint=config.checkpoint,
            distributed=context,
            on_step=on_step,
        )
        metadata = None
        if context.is_main:
            registry = ModelRegistry(config.output.registry_dir)
            metadata = _export_and_register(result, timelines, spec, algorithm, registry, config.exploration)
        context.barrier()
    return metadata


def _normalization_spec(config: TrainRunConfig, timelines: pd.DataFrame, *, write: bool) -> NormalizationSpec:
    """The configured spec, or one fitted on the training states (saved next to the logs)."""
    if config.normalization.spec_path is not None:
        return load_spec(config.normalization.spec_path)
    frame = frame_from_feature_maps(feature_maps(timelines["state_features"]))
    spec = fit_normalization(frame, config.normalization.fit)
    if write:
        save_spec(spec, config.output.spec_dir or config.output.log_dir)
    return spec


@dataclass(frozen=True)
class ExportedModel:
    """An exported graph and the ONNX contract it follows (see `trainer.artifact`)."""

    onnx_bytes: bytes
    input_names: list[str]
    output_names: list[str]


def export_trained(
    result: TrainingResult | ContinuousTrainingResult | BanditResult,
    timelines: pd.DataFrame,
    config: AlgorithmConfig,
) -> ExportedModel:
    """The one export dispatch for every algorithm in `trainer.algorithms.TRAIN_FUNCTIONS`.

    Q-networks (dqn, cql) get the discrete contract, bandits the discrete contract plus their extra
    outputs, actors (sac, td3) the continuous one; all are parity-checked against PyTorch on real
    training rows plus a synthetic batch with NaNs.
    """
    if isinstance(result, ParametricTrainingResult):
        onnx_bytes = export_parametric_model(result.network, seed=config.seed)
        return ExportedModel(
            onnx_bytes, [FEATURES_INPUT, ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT], [SCORES_OUTPUT]
        )
    if isinstance(result, BanditResult):
        features, mask = _parity_rows(
            timelines, result.feature_names, result.actions, seed=0, synthetic=False
        )
        onnx_bytes = export_bandit(result.network, config.softmax_temperature, features, mask)
        return ExportedModel(onnx_bytes, *_graph_names(onnx_bytes))
    if isinstance(result.network, ContinuousActor):
        features = np.concatenate(
            [
                _real_features(timelines, result.feature_names),
                parity_features(len(result.feature_names), seed=config.seed),
            ]
        )
        onnx_bytes = export_continuous_policy(result.network, features)
        return ExportedModel(onnx_bytes, [FEATURES_INPUT], list(CONTINUOUS_OUTPUTS))
    features, mask = _parity_rows(timelines, result.feature_names, result.actions, config.seed)
    onnx_bytes = export_model(result.network, config.softmax_temperature, features, mask)
    return ExportedModel(onnx_bytes, [FEATURES_INPUT, MASK_INPUT], [Q_OUTPUT, PROBS_OUTPUT])


def _export_and_register(
    result: TrainingResult | ContinuousTrainingResult,
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    config: AlgorithmConfig,
    registry: ModelRegistry,
    exploration: ExplorationConfig,
) -> ModelMetadata:
    exported = export_trained(result, timelines, config)
    return registry.register(
        exported.onnx_bytes,
        input_names=exported.input_names,
        output_names=exported.output_names,
        feature_names=result.feature_names,
        actions=result.actions,
        algorithm=config.type,
        algorithm_config=config.model_dump(mode="json"),
        exploration=exploration,
        normalization_spec_version=spec.version,
        normalization_spec_sha256=spec.content_sha256,
        data_range=result.data_range,
        training_metrics=result.metrics,
        code_version=code_version(),
        action_feature_names=getattr(result, "action_feature_names", None),
        action_normalization_spec_sha256=(
            result.action_spec.content_sha256 if isinstance(result, ParametricTrainingResult) else None
        ),
    )


def code_version() -> str:
    """`git describe`-style commit of the code that trained the model, else the package version."""
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f"git:{completed.stdout.strip()}{'-dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"streamrl=={importlib_metadata.version('streamrl')}"
        except importlib_metadata.PackageNotFoundError:
            return "unknown"


def _parity_rows(
    timelines: pd.DataFrame,
    feature_names: list[str],
    actions: list[str],
    seed: int,
    rows: int = 64,
    *,
    synthetic: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `rows` real training rows plus (if `synthetic`) a batch with NaNs and masked actions."""
    head = timelines.head(rows)
    real_features = _real_features(head, feature_names)
    real_mask, _ = build_possible_mask(head["possible_actions"], actions)
    if not synthetic:
        return real_features, real_mask
    synthetic_features, synthetic_mask = parity_sample(len(feature_names), len(actions), seed=seed)
    return np.concatenate([real_features, synthetic_features]), np.concatenate([real_mask, synthetic_mask])


def _graph_names(onnx_bytes: bytes) -> tuple[list[str], list[str]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def _real_features(timelines: pd.DataFrame, feature_names: list[str], rows: int = 64) -> np.ndarray:
    head = timelines.head(rows)
    return np.asarray(build_feature_matrix(feature_maps(head["state_features"]), feature_names), np.float32)
