"""What every served policy shares: the onnxruntime session (checked against `trainer.signatures`),
feature rows and sampling."""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np
import onnxruntime as ort

from contracts import ActionKind
from features import build_feature_matrix
from trainer.artifact import ModelMetadata
from trainer.data import feature_maps
from trainer.errors import PolicyInputError, PolicyOutputError, SignatureMismatchError
from trainer.signatures import check_graph

if TYPE_CHECKING:
    from trainer.registry import ModelRegistry

# The smallest propensity a policy reports for the action it chose. Exact probabilities of a
# drawn action are > 0 in exact arithmetic but can underflow (a Thompson arm drawn from a
# 10-sigma tail); logging 0 would make the row's importance weight infinite.
PROPENSITY_FLOOR = 1e-12


class OnnxPolicyBase(ABC):
    """One onnxruntime session over a model file, opened only if the graph fits its kind's serving signature."""

    kind: ClassVar[ActionKind]

    def __init__(self, path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1):
        """Open the graph at `path`; raise `SignatureMismatchError` unless it fits `metadata`'s contract.

        The contract is `trainer.signatures.SERVING_SIGNATURES[metadata.action_kind]` (plus what the
        algorithm reads, `required_outputs`): the table deploy and serving hold models to.
        """
        self.path = Path(path)
        self.metadata = metadata
        if metadata.action_kind is not self.kind:
            raise SignatureMismatchError(
                f"model {metadata.version} ({metadata.algorithm}) has action_kind "
                f"{metadata.action_kind.value!r}; {type(self).__name__} serves {self.kind.value!r} models "
                "(use trainer.load_policy, which picks the class from the metadata)",
                version=metadata.version,
                action_kind=metadata.action_kind,
                expected=self.kind.value,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        check_graph(metadata, self._session)

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, intra_op_threads: int = 1) -> Self:
        """Load a registered version after the registry's sha256 and load checks."""
        path, metadata = registry.get(version)
        return cls(path, metadata, intra_op_threads=intra_op_threads)

    @property
    def version(self) -> str:
        return self.metadata.version

    def features(self, maps: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """float32 [B, F] in `metadata.feature_names` order; absent or None values become NaN."""
        return np.asarray(
            build_feature_matrix(feature_maps(maps), self.metadata.feature_names), dtype=np.float32
        )

    def _checked_features(self, features_raw: np.ndarray) -> np.ndarray:
        features = np.asarray(features_raw, dtype=np.float32)
        n_features = len(self.metadata.feature_names)
        if features.ndim != 2 or features.shape[1] != n_features:
            raise PolicyInputError(
                f"features have shape {features.shape}; model {self.version} expects [batch, {n_features}] "
                f"in order {self.metadata.feature_names[:8]}…"
            )
        return features

    def _run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(list(outputs), feeds)

    def _missing_batch(self, rows: int = 2) -> np.ndarray:
        """The probe's states: row 0 all missing, the others all zero."""
        features = np.zeros((rows, len(self.metadata.feature_names)), dtype=np.float32)
        features[0] = np.nan
        return features


def sample_categorical(
    probabilities: np.ndarray, rng: np.random.Generator, version: str
) -> tuple[np.ndarray, np.ndarray]:
    """One index per row drawn from `probabilities` [B, K] (inverse CDF), and its probability.

    Rows that are NaN (a model output without a distribution) raise `PolicyOutputError` naming them.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    broken = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if len(broken):
        raise PolicyOutputError(
            f"model {version} produced non-finite outputs for rows {broken[:10].tolist()}; "
            "no action can be served for them",
            version=version,
            rows=broken.tolist(),
        )
    u = rng.random(probabilities.shape[0])
    cdf = np.cumsum(probabilities, axis=1)
    chosen = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1), probabilities.shape[1] - 1)
    rows = np.arange(probabilities.shape[0])
    zero = probabilities[rows, chosen] <= 0.0  # float edge at the top of the cdf
    chosen[zero] = probabilities[zero].argmax(axis=1)
    return chosen, probabilities[rows, chosen]


def probe_distribution(probabilities: np.ndarray, shape: tuple[int, int], version: str) -> None:
    """Raise ValueError unless `probabilities` is a finite [B, K] distribution per row."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape != shape:
        raise ValueError(
            f"model {version}: probe returned probabilities of shape {probabilities.shape}, expected {shape}"
        )
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5):
        raise ValueError(f"model {version}: probe returned an invalid distribution {probabilities.tolist()}")
