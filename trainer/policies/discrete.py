"""Served policy for discrete actions: named actions, a possible-actions mask, one distribution.

How Q-graph outputs become the served distribution depends on the algorithm, through one table
(`SERVED_DISTRIBUTIONS`, keyed by `ModelMetadata.algorithm`):
- default (dqn, cql, neural_bandit, linucb): `trainer.policy.action_distribution` of `q_values`
  with the model's `exploration`. For linucb `q_values` is the upper confidence bound, so this is
  "greedy on the UCB" plus whatever exploration the run configured.
- linear_thompson: one posterior draw per request, argmax over the possible actions; the
  propensity is the exact probability of that argmax (`trainer.policies.thompson`). The posterior
  is the exploration: `metadata.exploration` is not used.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np

from contracts import ActionKind
from trainer.artifact import (
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    MASK_INPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
    ModelMetadata,
)
from trainer.bandits import thompson_choice
from trainer.data import build_possible_mask
from trainer.errors import PolicyInputError, PolicyOutputError
from trainer.policies._common import (
    PROPENSITY_FLOOR,
    OnnxPolicyBase,
    probe_distribution,
    sample_categorical,
)
from trainer.policies.thompson import thompson_probabilities
from trainer.policy import ExplorationConfig, action_distribution


class ExplorationRule:
    """`action_distribution(q_values, mask, exploration)`; sampled by inverse CDF."""

    outputs: ClassVar[tuple[str, ...]] = (Q_OUTPUT,)

    def probabilities(
        self, outputs: dict[str, np.ndarray], mask: np.ndarray, exploration: ExplorationConfig
    ) -> np.ndarray:
        return action_distribution(outputs[Q_OUTPUT], mask, exploration)

    def decide(
        self,
        outputs: dict[str, np.ndarray],
        mask: np.ndarray,
        exploration: ExplorationConfig,
        rng: np.random.Generator,
        version: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        return sample_categorical(self.probabilities(outputs, mask, exploration), rng, version)


class ThompsonRule:
    """One draw reward_mean + exploration_width·N(0, 1) per row; exact argmax probabilities."""

    outputs: ClassVar[tuple[str, ...]] = (REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT)

    def probabilities(
        self, outputs: dict[str, np.ndarray], mask: np.ndarray, exploration: ExplorationConfig
    ) -> np.ndarray:
        return thompson_probabilities(outputs[REWARD_MEAN_OUTPUT], outputs[EXPLORATION_WIDTH_OUTPUT], mask)

    def decide(
        self,
        outputs: dict[str, np.ndarray],
        mask: np.ndarray,
        exploration: ExplorationConfig,
        rng: np.random.Generator,
        version: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        probabilities = self.probabilities(outputs, mask, exploration)
        broken = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        if len(broken):
            raise PolicyOutputError(
                f"model {version} produced non-finite reward_mean/exploration_width for rows "
                f"{broken[:10].tolist()}; no action can be served for them",
                version=version,
                rows=broken.tolist(),
            )
        mean = np.asarray(outputs[REWARD_MEAN_OUTPUT], dtype=np.float64)
        width = np.asarray(outputs[EXPLORATION_WIDTH_OUTPUT], dtype=np.float64)
        chosen = thompson_choice(mean, width, mask, rng)
        propensity = np.maximum(probabilities[np.arange(len(chosen)), chosen], PROPENSITY_FLOOR)
        return chosen, propensity


#: `metadata.algorithm` → how its graph's outputs become the served distribution (default: exploration).
SERVED_DISTRIBUTIONS: dict[str, type[ExplorationRule] | type[ThompsonRule]] = {
    "linear_thompson": ThompsonRule,
}


def _rule(metadata: ModelMetadata) -> ExplorationRule | ThompsonRule:
    return SERVED_DISTRIBUTIONS.get(metadata.algorithm, ExplorationRule)()


class DiscretePolicy(OnnxPolicyBase):
    """A discrete-action model (`features`, `possible_actions_mask` → `q_values`, …) as served."""

    kind: ClassVar[ActionKind] = ActionKind.DISCRETE

    def __init__(self, path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1):
        self._rule = _rule(metadata)
        super().__init__(path, metadata, intra_op_threads)

    def q_values(self, features_raw: np.ndarray, possible_mask: np.ndarray) -> np.ndarray:
        """Q [B, A] float32 from raw features [B, F] (NaN = missing); impossible actions are -inf."""
        return self._outputs(features_raw, possible_mask, (Q_OUTPUT,))[Q_OUTPUT]

    def probabilities(self, features_raw: np.ndarray, possible_mask: np.ndarray) -> np.ndarray:
        """The served distribution [B, A] (see the module docstring); NaN rows have none."""
        outputs = self._outputs(features_raw, possible_mask, self._rule.outputs)
        return self._rule.probabilities(
            outputs, np.asarray(possible_mask, np.float32), self.metadata.exploration
        )

    def decide(
        self, features_raw: np.ndarray, possible_mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chosen action index [B] int, its propensity [B] float64 > 0) as serving samples them.

        Raises `PolicyOutputError` (with `.rows`) when the model has no distribution for some rows.
        """
        outputs = self._outputs(features_raw, possible_mask, self._rule.outputs)
        mask = np.asarray(possible_mask, np.float32)
        chosen, propensity = self._rule.decide(outputs, mask, self.metadata.exploration, rng, self.version)
        return chosen.astype(np.int64), propensity.astype(np.float64)

    def possible_mask(self, possible_actions: Iterable[Iterable[str]]) -> np.ndarray:
        """float32 [B, A] mask in `metadata.actions` order; unknown action names are an error."""
        mask, unknown = build_possible_mask(possible_actions, self.metadata.actions)
        if unknown:
            raise PolicyInputError(
                f"possible actions {sorted(unknown)} are not actions of model {self.version} "
                f"({self.metadata.actions}); rows {sorted({r for rs in unknown.values() for r in rs})[:10]}"
            )
        return mask

    def probe(self) -> None:
        """Raise ValueError unless the model answers a proper distribution and decision on a probe batch."""
        n_actions = len(self.metadata.actions)
        features = self._missing_batch()
        mask = np.ones((len(features), n_actions), dtype=np.float32)
        probe_distribution(self.probabilities(features, mask), (len(features), n_actions), self.version)
        chosen, propensity = self.decide(features, mask, np.random.default_rng(0))
        if (
            not ((chosen >= 0) & (chosen < n_actions)).all()
            or not ((propensity > 0) & (propensity <= 1)).all()
        ):
            raise ValueError(
                f"model {self.version}: probe decided actions {chosen.tolist()} with propensities "
                f"{propensity.tolist()}; expected indices in [0, {n_actions}) and propensities in (0, 1]"
            )

    def _outputs(
        self, features_raw: np.ndarray, possible_mask: np.ndarray, names: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        features = self._checked_features(features_raw)
        mask = np.asarray(possible_mask, dtype=np.float32)
        n_actions = len(self.metadata.actions)
        if mask.shape != (features.shape[0], n_actions):
            raise PolicyInputError(
                f"possible_mask has shape {mask.shape}; model {self.version} expects "
                f"[{features.shape[0]}, {n_actions}] for actions {self.metadata.actions}"
            )
        if features.shape[0] and not (mask > 0.5).any(axis=1).all():
            raise PolicyInputError("every row of possible_mask needs at least one possible action")
        values = self._run(names, {FEATURES_INPUT: features, MASK_INPUT: mask})
        return dict(zip(names, values, strict=True))
