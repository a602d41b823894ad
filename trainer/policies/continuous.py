"""Served policy for continuous actions: a tanh-squashed Gaussian mapped onto [low, high].

The graph gives, per row, the pre-squash Gaussian N(loc, σ²) with σ = exp(action_log_std)
(`trainer.artifact`). Serving samples x ~ N(loc, σ²) per dimension and answers

    a = low + (high − low) · (tanh(x) + 1) / 2,

whose density in env units is, per dimension (with h = (high − low) / 2),

    log p(a) = log N(x; loc, σ²) + log h − log(a − low) − log(high − a),   x = ½·log((a − low)/(high − a)).

Both are computed in float64 from (a − low) and (high − a), so actions within rounding of a bound
keep an accurate density (no clipping of tanh). A draw so far out that tanh rounds to ±1 (|x| ≳ 18)
is moved one float step inside the bound and its density evaluated there. SAC exports its learned
σ; TD3 exports its constant `exploration_noise_std` as σ, so for both the sampled distribution and
the reported density are the same. `mean` is the graph's `action_mean`, tanh(loc) mapped: the
greedy action and the median of the served distribution (not its expectation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from contracts import ActionKind
from trainer.artifact import (
    ACTION_LOC_OUTPUT,
    ACTION_LOG_STD_OUTPUT,
    ACTION_MEAN_OUTPUT,
    FEATURES_INPUT,
    ModelMetadata,
)
from trainer.errors import PolicyInputError, PolicyOutputError
from trainer.policies._common import OnnxPolicyBase

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def sample_tanh_gaussian(
    loc: np.ndarray,
    log_std: np.ndarray,
    action_low: np.ndarray,
    action_high: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """float64 [B, D] actions strictly inside (low, high): low + (high − low)·sigmoid(2x), x ~ N(loc, σ²).

    (tanh(x) + 1)/2 = sigmoid(2x); computed this way the gap to the nearer bound keeps full precision.
    """
    low = np.asarray(action_low, np.float64)
    high = np.asarray(action_high, np.float64)
    x = np.asarray(loc, np.float64) + np.exp(np.asarray(log_std, np.float64)) * rng.standard_normal(
        np.shape(loc)
    )
    actions = low + (high - low) * _sigmoid(2.0 * x)
    return np.clip(actions, np.nextafter(low, high), np.nextafter(high, low))


def tanh_gaussian_log_density(
    actions: np.ndarray, loc: np.ndarray, log_std: np.ndarray, action_low: np.ndarray, action_high: np.ndarray
) -> np.ndarray:
    """float64 [B]: log density (w.r.t. env units, summed over dimensions) of `actions` [B, D].

    −inf for a row with any dimension outside the open interval (low, high) (the density is 0 there).
    """
    a = np.asarray(actions, np.float64)
    low = np.asarray(action_low, np.float64)
    high = np.asarray(action_high, np.float64)
    above_low, below_high = a - low, high - a
    inside = ((above_low > 0) & (below_high > 0)).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_above, log_below = np.log(above_low), np.log(below_high)
        x = 0.5 * (log_above - log_below)
        log_std = np.asarray(log_std, np.float64)
        gaussian = -0.5 * ((x - np.asarray(loc, np.float64)) / np.exp(log_std)) ** 2 - log_std - _LOG_SQRT_2PI
        per_dimension = gaussian + np.log(0.5 * (high - low)) - log_above - log_below
    return np.where(inside, per_dimension.sum(axis=1), -np.inf)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class ContinuousPolicy(OnnxPolicyBase):
    """A continuous-action actor (`features` → `action_mean`, `action_loc`, `action_log_std`) as served."""

    kind: ClassVar[ActionKind] = ActionKind.CONTINUOUS

    def __init__(self, path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1):
        super().__init__(path, metadata, intra_op_threads)
        self.action_low, self.action_high = _bounds(metadata)

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    def distribution(self, features_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float64 (action_mean [B, D] env units, action_loc [B, D], action_log_std [B, D]).

        Raises `PolicyOutputError` (with `.rows`) for rows whose outputs are not finite.
        """
        features = self._checked_features(features_raw)
        outputs = self._run(
            (ACTION_MEAN_OUTPUT, ACTION_LOC_OUTPUT, ACTION_LOG_STD_OUTPUT), {FEATURES_INPUT: features}
        )
        mean, loc, log_std = (np.asarray(o, np.float64) for o in outputs)
        broken = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(loc) & np.isfinite(log_std)).all(axis=1))
        if len(broken):
            raise PolicyOutputError(
                f"model {self.version} produced non-finite action_mean/action_loc/action_log_std for rows "
                f"{broken[:10].tolist()}; no action can be served for them",
                version=self.version,
                rows=broken.tolist(),
            )
        return mean, loc, log_std

    def mean(self, features_raw: np.ndarray) -> np.ndarray:
        """float64 [B, D]: the greedy action in env units (the served distribution's median)."""
        return self.distribution(features_raw)[0]

    def act(
        self, features_raw: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sampled action [B, D] env units, its log density [B] under the served policy, mean [B, D])."""
        mean, loc, log_std = self.distribution(features_raw)
        actions = sample_tanh_gaussian(loc, log_std, self.action_low, self.action_high, rng)
        return (
            actions,
            tanh_gaussian_log_density(actions, loc, log_std, self.action_low, self.action_high),
            mean,
        )

    def log_density(self, features_raw: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """float64 [B]: log density of env-unit `actions` [B, D] under the served policy; −inf outside (low, high)."""
        features = self._checked_features(features_raw)
        a = np.asarray(actions, np.float64)
        if a.shape != (features.shape[0], self.action_dim):
            raise PolicyInputError(
                f"actions have shape {a.shape}; model {self.version} expects [{features.shape[0]}, "
                f"{self.action_dim}] in env units, dimensions {self.metadata.actions}"
            )
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        if len(bad):
            raise PolicyInputError(f"actions in rows {bad[:10].tolist()} are not finite")
        _, loc, log_std = self.distribution(features)
        return tanh_gaussian_log_density(a, loc, log_std, self.action_low, self.action_high)

    def probe(self) -> None:
        """Raise ValueError unless the model answers in-bounds means and samples with finite density."""
        features = self._missing_batch()
        shape = (len(features), self.action_dim)
        mean, loc, log_std = self.distribution(features)
        if mean.shape != shape or loc.shape != shape or log_std.shape != shape:
            raise ValueError(
                f"model {self.version}: probe outputs have shapes {mean.shape}, {loc.shape}, {log_std.shape}; "
                f"expected {shape} for action dimensions {self.metadata.actions}"
            )
        if ((mean < self.action_low) | (mean > self.action_high)).any():
            raise ValueError(
                f"model {self.version}: probe action_mean {mean.tolist()} is outside "
                f"[{self.action_low.tolist()}, {self.action_high.tolist()}]"
            )
        actions, log_density, _ = self.act(features, np.random.default_rng(0))
        if not np.isfinite(log_density).all():
            raise ValueError(
                f"model {self.version}: probe sample {actions.tolist()} has log density {log_density.tolist()}"
            )


def _bounds(metadata: ModelMetadata) -> tuple[np.ndarray, np.ndarray]:
    """float64 `action_low`, `action_high` from the algorithm config.

    `OnnxPolicyBase.__init__` has already held them to the contract (`trainer.signatures`: one finite
    value per action name, low < high) and raised `SignatureMismatchError` otherwise.
    """
    config = metadata.algorithm_config
    return np.asarray(config["action_low"], np.float64), np.asarray(config["action_high"], np.float64)
