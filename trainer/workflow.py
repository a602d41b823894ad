"""Train → export → register, as one typed function the CLI and the continuous loop call."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

from features import NormalizationSpec, build_feature_matrix
from trainer.artifact import ModelMetadata
from trainer.config import DqnConfig
from trainer.data import build_possible_mask, feature_maps
from trainer.dqn import train_dqn
from trainer.export import export_model, parity_sample
from trainer.policy import ExplorationConfig
from trainer.registry import ModelRegistry


def train_and_register(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: DqnConfig,
    registry: ModelRegistry,
    log_dir: Path,
    exploration: ExplorationConfig,
) -> ModelMetadata:
    """Train a DQN on `timelines`, export it (parity-checked on real rows too) and register it.

    Registering does not deploy: the evaluation gate decides that.
    """
    result = train_dqn(timelines, spec, actions, config, log_dir)
    features, mask = _parity_rows(timelines, result.feature_names, result.actions, config.seed)
    onnx_bytes = export_model(result.network, config.softmax_temperature, features, mask)
    return registry.register(
        onnx_bytes,
        feature_names=result.feature_names,
        actions=result.actions,
        algorithm="dqn",
        algorithm_config=config.model_dump(mode="json"),
        exploration=exploration,
        normalization_spec_version=spec.version,
        normalization_spec_sha256=spec.content_sha256,
        data_range=result.data_range,
        training_metrics=result.metrics,
        code_version=code_version(),
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
    timelines: pd.DataFrame, feature_names: list[str], actions: list[str], seed: int, rows: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `rows` real training rows plus a synthetic batch with NaNs and masked actions."""
    head = timelines.head(rows)
    real_features = np.asarray(
        build_feature_matrix(feature_maps(head["state_features"]), feature_names), dtype=np.float32
    )
    real_mask, _ = build_possible_mask(head["possible_actions"], actions)
    synthetic_features, synthetic_mask = parity_sample(len(feature_names), len(actions), seed=seed)
    return np.concatenate([real_features, synthetic_features]), np.concatenate([real_mask, synthetic_mask])
