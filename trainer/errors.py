"""Errors raised by the trainer stage: bad training data, bad exports, bad registry state."""

from __future__ import annotations

from contracts import StreamrlError


class TrainerError(StreamrlError):
    """Base of the trainer stage's errors."""


class TrainingDataError(TrainerError):
    """Timelines that cannot be turned into training tensors (unknown action, missing column...)."""

    def __init__(self, message: str, *, column: str | None = None, rows: list[int] | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.rows = rows or []


class ExportParityError(TrainerError):
    """The exported ONNX graph disagrees with the PyTorch module it came from."""

    def __init__(self, message: str, *, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


class RegistryError(TrainerError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to...)."""

    def __init__(self, message: str, *, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


class CorruptModelError(RegistryError):
    """A registered model whose file fails its sha256 check or that onnxruntime cannot load."""

    def __init__(self, message: str, *, version: str | None = None, path: str | None = None) -> None:
        super().__init__(message, version=version)
        self.path = path


class PolicyInputError(TrainerError):
    """Inputs to an `OnnxPolicy` with the wrong shape for the model."""
