"""Train → export → register: `train_and_register` (in-memory timelines, the nightly refresh) and
`run_training` (one run from its YAML config, single process or under torchrun)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import pandas as pd

from features import (
    NormalizationSpec,
    fit_normalization,
    frame_from_feature_maps,
    load_spec,
    save_spec,
)
from stream import load_timelines, timeline_files
from trainer.algorithms import AlgorithmConfig, algorithm_kind, export_function, train_function
from trainer.artifact import ModelMetadata
from trainer.bandits import BanditResult
from trainer.config import DqnConfig
from trainer.continuous import ContinuousTrainingResult
from trainer.data import feature_maps
from trainer.distributed import open_process_group
from trainer.dqn import StepHook, TrainingResult
from trainer.errors import TrainingDataError
from trainer.exporters import ExportedModel
from trainer.parametric_dqn import ParametricTrainingResult
from trainer.parquet_data import DEFAULT_BATCH_ROWS, PreparedTimelines, stream_transitions
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
        if config.data.batch_rows is None:
            timelines: pd.DataFrame | PreparedTimelines = load_timelines(
                config.data.output_dir, config.data.start, config.data.end
            )
        else:
            timelines = _prepared_timelines(config)
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
            rows = timelines.head if isinstance(timelines, PreparedTimelines) else timelines
            metadata = _export_and_register(result, rows, spec, algorithm, registry, config.exploration)
        context.barrier()
    return metadata


def _prepared_timelines(config: TrainRunConfig) -> PreparedTimelines:
    """`data.batch_rows` set: the timeline parquet read batch by batch straight into DQN tensors."""
    algorithm = config.algorithm
    if (
        not isinstance(algorithm, DqnConfig) or config.normalization.spec_path is None
    ):  # the config checks this
        raise TrainingDataError(
            f"data.batch_rows does not apply to algorithm {algorithm.type!r} without a spec_path"
        )
    spec = load_spec(config.normalization.spec_path)
    return stream_transitions(
        timeline_files(config.data.output_dir),
        spec.feature_names,
        config.actions,
        algorithm.gamma,
        algorithm.reward_clip,
        algorithm.n_step,
        batch_rows=config.data.batch_rows or DEFAULT_BATCH_ROWS,
        start=config.data.start,
        end=config.data.end,
    )


def _normalization_spec(
    config: TrainRunConfig, timelines: pd.DataFrame | PreparedTimelines, *, write: bool
) -> NormalizationSpec:
    """The configured spec, or one fitted on the training states (saved next to the logs)."""
    if config.normalization.spec_path is not None:
        return load_spec(config.normalization.spec_path)
    if isinstance(timelines, PreparedTimelines):  # the run config requires spec_path with batch_rows
        raise TrainingDataError("a spec cannot be fitted on batched timelines; set normalization.spec_path")
    frame = frame_from_feature_maps(feature_maps(timelines["state_features"]))
    spec = fit_normalization(frame, config.normalization.fit)
    if write:
        save_spec(spec, config.output.spec_dir or config.output.log_dir)
    return spec


def export_trained(
    result: TrainingResult | ContinuousTrainingResult | BanditResult | ParametricTrainingResult,
    timelines: pd.DataFrame,
    config: AlgorithmConfig,
) -> ExportedModel:
    """The one export dispatch for every algorithm: `trainer.algorithms.EXPORT_FUNCTIONS[config.type]`.

    Each exporter follows its kind's ONNX contract (`trainer.signatures.SERVING_SIGNATURES`) and is
    parity-checked against PyTorch on real training rows plus a synthetic batch with NaNs.
    """
    return export_function(config.type)(result, timelines, config)


def _export_and_register(
    result: TrainingResult | ContinuousTrainingResult | BanditResult | ParametricTrainingResult,
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
        action_kind=algorithm_kind(config.type),
        algorithm_config=config.model_dump(mode="json"),
        exploration=exploration,
        normalization_spec_version=spec.version,
        normalization_spec_sha256=spec.content_sha256,
        data_range=result.data_range,
        training_metrics=result.metrics,
        code_version=code_version(),
        action_feature_names=exported.action_feature_names,
        action_normalization_spec_sha256=exported.action_normalization_spec_sha256,
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
