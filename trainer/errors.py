"""Errors raised by the trainer stage: bad training data, bad exports, bad registry state."""

from __future__ import annotations

from collections.abc import Sequence

from contracts import ActionKind, StreamrlError


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


class SignatureMismatchError(RegistryError):
    """A model whose kind, metadata or ONNX graph does not fit its kind's serving contract.

    Raised by `trainer.signatures.check_signature` (deploy, rollback, serving's model swap) and by
    every served policy when it opens a model (`trainer.signatures.check_graph`). `tensor` names the
    input or output at fault (None for a kind or metadata problem); `expected` says what the
    contract wants there (e.g. `float32 [batch, n_actions=3]`, or the kind's name).
    """

    def __init__(
        self,
        message: str,
        *,
        version: str,
        action_kind: ActionKind,
        tensor: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message, version=version)
        self.action_kind = action_kind
        self.tensor = tensor
        self.expected = expected


class PolicyInputError(TrainerError):
    """Inputs to a served policy with the wrong shape for the model."""


class PolicyOutputError(TrainerError):
    """A model that answered rows with non-finite values: no distribution to serve for them."""

    def __init__(self, message: str, *, version: str, rows: Sequence[int]) -> None:
        super().__init__(message)
        self.version = version
        self.rows = list(rows)
