"""One YAML file per training run, validated into `TrainRunConfig`.

Relative paths in the file are relative to the file's own folder, so a run folder can be
moved or checked in as a whole. A file that does not validate raises `RunConfigError` naming
the file, the key, the value found and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.config_file import read_yaml_mapping, validation_error
from features.identify import NormalizationConfig
from trainer.algorithms import TRAIN_FUNCTIONS, AlgorithmConfig
from trainer.checkpoint import CheckpointConfig
from trainer.distributed import DistributedConfig
from trainer.errors import TrainerError
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig

BATCHED_ALGORITHMS = ("dqn", "cql")  # the algorithms `data.batch_rows` can feed (trainer.parquet_data)


class RunConfigError(TrainerError):
    """A run config file is missing, not YAML, or does not validate."""

    def __init__(self, message: str, *, path: Path, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimelinesSource(_Section):
    """Timelines written by the stream stage, decision time in [start, end)."""

    type: Literal["timelines"] = "timelines"
    output_dir: Path = Field(description="the stream job's output_dir (timelines/ is under it)")
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    batch_rows: int | None = Field(
        None,
        gt=0,
        description="read the parquet this many rows at a time straight into tensors (trainer.parquet_data) "
        "instead of loading every row as pandas; for runs too large for memory (dqn and cql)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> TimelinesSource:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start {self.start.isoformat()} must be before end {self.end.isoformat()}")
        return self


class NormalizationSource(_Section):
    """Use a saved spec (`spec_path`), or fit one on the training rows with `fit`."""

    spec_path: Path | None = None
    fit: NormalizationConfig = Field(default_factory=NormalizationConfig)


class OutputConfig(_Section):
    registry_dir: Path = Field(description="model registry root; the run registers, it never deploys")
    log_dir: Path = Field(description="tensorboard event files")
    spec_dir: Path | None = Field(None, description="where a fitted spec is saved (default: log_dir)")


class TrainRunConfig(_Section):
    """Everything one training run needs; `streamrl train --config run.yaml` reads it."""

    schema_version: Literal[1] = 1
    name: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$")
    data: TimelinesSource
    actions: list[str] = Field(min_length=1)
    normalization: NormalizationSource = Field(default_factory=NormalizationSource)
    algorithm: AlgorithmConfig
    exploration: ExplorationConfig = Field(default_factory=lambda: EpsilonGreedyExploration(epsilon=0.05))
    output: OutputConfig
    checkpoint: CheckpointConfig | None = None
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _unique_actions(self) -> TrainRunConfig:
        duplicates = sorted({a for a in self.actions if self.actions.count(a) > 1})
        if duplicates:
            raise ValueError(f"actions must be unique, {duplicates} appear more than once")
        return self

    @model_validator(mode="after")
    def _batched_reading(self) -> TrainRunConfig:
        if self.data.batch_rows is None:
            return self
        if self.algorithm.type not in BATCHED_ALGORITHMS:
            raise ValueError(
                f"data.batch_rows={self.data.batch_rows} reads timelines in batches for {list(BATCHED_ALGORITHMS)} "
                f"only, not algorithm.type {self.algorithm.type!r}; remove data.batch_rows"
            )
        if self.normalization.spec_path is None:
            raise ValueError(
                f"data.batch_rows={self.data.batch_rows} needs normalization.spec_path: a batched run does not "
                "hold the rows a spec is fitted on; fit one first (features.fit_normalization_spark) and set its path"
            )
        return self


def load_run_config(path: Path) -> TrainRunConfig:
    """Read and validate a run file; relative paths resolve against the file's folder."""
    path = Path(path)
    data = read_yaml_mapping(path, _run_config_error)
    try:
        config = TrainRunConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, _run_config_error, union_tags=TRAIN_FUNCTIONS) from exc
    return _resolve_paths(config, path.resolve().parent)


def _run_config_error(message: str, path: Path, key: str | None) -> RunConfigError:
    return RunConfigError(message, path=path, key=key)


def _resolve_paths(config: TrainRunConfig, base: Path) -> TrainRunConfig:
    def absolute(value: Path | None) -> Path | None:
        return None if value is None else (value if value.is_absolute() else base / value)

    update: dict[str, Any] = {
        "data": config.data.model_copy(update={"output_dir": absolute(config.data.output_dir)}),
        "normalization": config.normalization.model_copy(
            update={"spec_path": absolute(config.normalization.spec_path)}
        ),
        "output": config.output.model_copy(
            update={
                "registry_dir": absolute(config.output.registry_dir),
                "log_dir": absolute(config.output.log_dir),
                "spec_dir": absolute(config.output.spec_dir),
            }
        ),
    }
    if config.checkpoint is not None:
        update["checkpoint"] = config.checkpoint.model_copy(update={"dir": absolute(config.checkpoint.dir)})
    return config.model_copy(update=update)
