"""A registered model as a policy: onnxruntime Q-values plus the one served action distribution.

Evaluation and serving both go through this class, so the propensities CPE scores are the
ones serving samples from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from features import build_feature_matrix
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, Q_OUTPUT, ModelMetadata
from trainer.data import build_possible_mask, feature_maps
from trainer.errors import PolicyInputError
from trainer.policy import action_distribution
from trainer.registry import ModelRegistry


class OnnxPolicy:
    """An onnxruntime session over one model file, with its metadata."""

    def __init__(self, path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1):
        self.path = Path(path)
        self.metadata = metadata
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, intra_op_threads: int = 1) -> OnnxPolicy:
        """Load a registered version after the registry's sha256 and load checks."""
        path, metadata = registry.get(version)
        return cls(path, metadata, intra_op_threads=intra_op_threads)

    @property
    def version(self) -> str:
        return self.metadata.version

    def q_values(self, features_raw: np.ndarray, possible_mask: np.ndarray) -> np.ndarray:
        """Q [B, A] float32 from raw features [B, F] (NaN = missing); impossible actions are -inf."""
        features, mask = self._check(features_raw, possible_mask)
        (q,) = self._session.run([Q_OUTPUT], {FEATURES_INPUT: features, MASK_INPUT: mask})
        return q

    def probabilities(self, features_raw: np.ndarray, possible_mask: np.ndarray) -> np.ndarray:
        """The served distribution [B, A]: `action_distribution` with the model's exploration."""
        q = self.q_values(features_raw, possible_mask)
        return action_distribution(q, possible_mask, self.metadata.exploration)

    def possible_mask(self, possible_actions: Iterable[Iterable[str]]) -> np.ndarray:
        """float32 [B, A] mask in `metadata.actions` order; unknown action names are an error."""
        mask, unknown = build_possible_mask(possible_actions, self.metadata.actions)
        if unknown:
            raise PolicyInputError(
                f"possible actions {sorted(unknown)} are not actions of model {self.version} "
                f"({self.metadata.actions}); rows {sorted({r for rs in unknown.values() for r in rs})[:10]}"
            )
        return mask

    def features(self, maps: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """float32 [B, F] in `metadata.feature_names` order; absent or None values become NaN."""
        return np.asarray(
            build_feature_matrix(feature_maps(maps), self.metadata.feature_names), dtype=np.float32
        )

    def _check(self, features_raw: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = np.asarray(features_raw, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        n_features, n_actions = len(self.metadata.feature_names), len(self.metadata.actions)
        if features.ndim != 2 or features.shape[1] != n_features:
            raise PolicyInputError(
                f"features have shape {features.shape}; model {self.version} expects [batch, {n_features}] "
                f"in order {self.metadata.feature_names[:8]}…"
            )
        if mask.shape != (features.shape[0], n_actions):
            raise PolicyInputError(
                f"possible_mask has shape {mask.shape}; model {self.version} expects "
                f"[{features.shape[0]}, {n_actions}] for actions {self.metadata.actions}"
            )
        if features.shape[0] and not (mask > 0.5).any(axis=1).all():
            raise PolicyInputError("every row of possible_mask needs at least one possible action")
        return features, mask
