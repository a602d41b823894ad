"""Served policy for parametric actions: per-request candidates, each a feature map.

The graph scores every (state, candidate) pair (`trainer.artifact`: `scores`, padding = -inf);
the served distribution over a row's candidates is `trainer.policy.action_distribution` of those
scores with the model's exploration, exactly as for discrete Q-values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from contracts import ActionKind
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    FEATURES_INPUT,
    SCORES_OUTPUT,
    ModelMetadata,
)
from trainer.errors import PolicyInputError
from trainer.parametric_data import candidate_tensor
from trainer.policies._common import (
    OnnxPolicyBase,
    probe_distribution,
    sample_categorical,
)
from trainer.policy import action_distribution

PROBE_CANDIDATES = 3


class ParametricPolicy(OnnxPolicyBase):
    """A parametric-action Q model (`features`, `action_features`, `candidate_mask` → `scores`)."""

    kind: ClassVar[ActionKind] = ActionKind.PARAMETRIC

    def __init__(self, path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1):
        super().__init__(path, metadata, intra_op_threads)  # checks action_feature_names is set
        self.action_feature_names: list[str] = list(metadata.action_feature_names or ())

    def candidates(
        self, candidate_lists: Sequence[Sequence[Mapping[str, float | None]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [B, K, G] raw candidate features, NaN = missing or padding; float32 [B, K] mask).

        K is the longest row's candidate count; G follows `action_feature_names`. Every row needs
        at least one candidate and every candidate must be a feature map.
        """
        rows = list(candidate_lists)
        for row, candidates in enumerate(rows):
            if candidates is None or len(candidates) == 0:
                raise PolicyInputError(
                    f"row {row} has no candidates; model {self.version} needs at least one"
                )
            bad = [i for i, c in enumerate(candidates) if not isinstance(c, Mapping)]
            if bad:
                raise PolicyInputError(
                    f"row {row}: candidates {bad[:10]} are not feature maps (name → number); got "
                    f"{type(candidates[bad[0]]).__name__}, expected a mapping over {self.action_feature_names[:8]}"
                )
        return candidate_tensor(rows, self.action_feature_names)

    def scores(
        self, features_raw: np.ndarray, action_features: np.ndarray, candidate_mask: np.ndarray
    ) -> np.ndarray:
        """Q(s, a) float32 [B, K] for every candidate; padding (mask 0) is -inf."""
        features = self._checked_features(features_raw)
        candidates = np.asarray(action_features, dtype=np.float32)
        mask = np.asarray(candidate_mask, dtype=np.float32)
        n_action_features = len(self.action_feature_names)
        if (
            candidates.ndim != 3
            or candidates.shape[0] != features.shape[0]
            or candidates.shape[2] != n_action_features
        ):
            raise PolicyInputError(
                f"action_features have shape {candidates.shape}; model {self.version} expects "
                f"[{features.shape[0]}, candidates, {n_action_features}] in order {self.action_feature_names[:8]}"
            )
        if mask.shape != candidates.shape[:2]:
            raise PolicyInputError(
                f"candidate_mask has shape {mask.shape}; expected {candidates.shape[:2]} (one entry per candidate)"
            )
        empty = np.flatnonzero(~(mask > 0.5).any(axis=1))
        if len(empty):
            raise PolicyInputError(f"rows {empty[:10].tolist()} of candidate_mask have no candidate")
        (scores,) = self._run(
            (SCORES_OUTPUT,),
            {FEATURES_INPUT: features, ACTION_FEATURES_INPUT: candidates, CANDIDATE_MASK_INPUT: mask},
        )
        return scores

    def probabilities(
        self, features_raw: np.ndarray, action_features: np.ndarray, candidate_mask: np.ndarray
    ) -> np.ndarray:
        """The served distribution [B, K]: `action_distribution(scores, mask, metadata.exploration)`."""
        scores = self.scores(features_raw, action_features, candidate_mask)
        return action_distribution(
            scores, np.asarray(candidate_mask, np.float32) > 0.5, self.metadata.exploration
        )

    def decide(
        self,
        features_raw: np.ndarray,
        action_features: np.ndarray,
        candidate_mask: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chosen candidate index [B] int, its propensity [B] float64) sampled from `probabilities`.

        Raises `PolicyOutputError` (with `.rows`) when some rows' scores are not finite.
        """
        probabilities = self.probabilities(features_raw, action_features, candidate_mask)
        chosen, propensity = sample_categorical(probabilities, rng, self.version)
        return chosen.astype(np.int64), propensity

    def probe(self) -> None:
        """Raise ValueError unless the model answers a distribution over 3 all-missing/zero candidates."""
        features = self._missing_batch()
        candidates = np.zeros((len(features), PROBE_CANDIDATES, len(self.action_feature_names)), np.float32)
        candidates[0] = np.nan
        mask = np.ones((len(features), PROBE_CANDIDATES), np.float32)
        probe_distribution(
            self.probabilities(features, candidates, mask), (len(features), PROBE_CANDIDATES), self.version
        )
