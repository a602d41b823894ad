"""Every estimator recomputed on bootstrap resamples of whole episodes, with both models refitted.

`refit_bootstrap` draws `bootstrap_samples` resamples of the episodes (an episode's decisions stay
together: they are not independent), refits the reward model and FQE on each
(`evaluation.refit`), and recomputes every estimator from the refitted predictions on the
resample's rows. The percentile intervals then hold the sampling error of the evaluation rows
*and* of the fitted models — which is all the error of DM and FQE and the model part of DR,
sequential DR and MAGIC.

MAGIC gets its own interval: each resample re-selects its blend of j-step returns (the
covariance Ω from all resamples, the bias of each j-step return measured against WDR's interval
re-centred on that resample's WDR), so the interval holds the blend's selection noise too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.config import EvaluationConfig
from evaluation.estimators import ONE_STEP_VALUE, bootstrap_counts, interval, relative_to_logged
from evaluation.pareto import pareto_k
from evaluation.refit import DesignBlocks, LinearDesign, refit_predictions
from evaluation.sequential import (
    _episode_layout,
    _StepTerms,
    _truncation_points,
    cumulative_log_weights,
    magic_blend_weights,
    step_returns,
)

# FQE is checked against weighted DR over the longest prefix of steps whose cumulative weights keep
# an effective sample size of at least this many episodes and this share of them.
SHORT_HORIZON_MIN_ESS = 30.0
SHORT_HORIZON_MIN_SHARE = 0.2
# A batch of resamples holds at most this many [resample, row] floats per array (~32 MB each).
_MAX_BATCH_FLOATS = 4_000_000


@dataclass(frozen=True, slots=True)
class Replicates:
    """One estimator's value on every resample, raw and normalized by the resample's logged value."""

    values: np.ndarray
    normalized: np.ndarray

    def intervals(self, confidence: float) -> tuple[float, float, float, float]:
        """(ci_low, ci_high, normalized_ci_low, normalized_ci_high): percentile intervals."""
        return (*interval(self.values, confidence), *interval(self.normalized, confidence))


@dataclass(frozen=True, slots=True)
class RefitBootstrap:
    """Resampled values of every estimator (keys without the kind's prefix), and MAGIC's point."""

    replicates: dict[str, Replicates]
    magic_value: float
    magic_normalized: float
    magic_effective_sample_size: float  # Σ_j x_j · ESS of the weights g^(j) uses (n for j = −1)
    # Pareto k̂ of the weights at the deepest step j its blend gives weight (None: FQE alone, or no tail)
    magic_pareto_k: float | None
    short_horizon: ShortHorizonCheck | None  # FQE against weighted DR where the weights are light


@dataclass(frozen=True, slots=True)
class ShortHorizonCheck:
    """g^(j) − g^(−1) on every resample: weighted DR over the first `steps` steps, then FQE, minus
    FQE alone — the weighted Bellman residuals of FQE there, which are 0 in expectation when FQE is
    right. `steps` is the longest prefix whose weights keep `effective_sample_size` ≥ the minimum."""

    steps: int
    effective_sample_size: float
    differences: np.ndarray


class _Episodes:
    """Fixed per-row pieces of the sequential estimators: layout, discounts, log weights."""

    def __init__(self, episode: np.ndarray, rho: np.ndarray, reward: np.ndarray, gamma: float) -> None:
        n = episode.size
        self.episode = episode
        self.starts, self.step, self.lengths = _episode_layout(episode, n)
        self.horizon = int(self.lengths.max())
        self.n_episodes = self.lengths.size
        self.discount = gamma**self.step
        self.log_w = cumulative_log_weights(episode, rho, self.starts)
        self.log_w_prev = np.where(self.step == 0, 0.0, np.r_[0.0, self.log_w[:-1]])
        with np.errstate(over="ignore"):
            self.w, self.w_prev = np.exp(self.log_w), np.exp(self.log_w_prev)
        self.reward = reward
        self.logged_return = np.bincount(episode, weights=self.discount * reward, minlength=self.n_episodes)
        with np.errstate(invalid="ignore", over="ignore"):
            self.pdis = np.bincount(
                episode, weights=self.discount * self.w * reward, minlength=self.n_episodes
            )
        self.truncations = _truncation_points(self.horizon)
        # ESS of the cumulative weights at each step (an ended episode keeps its last weight).
        matrix = np.full((self.n_episodes, self.horizon), -np.inf)
        matrix[episode, self.step] = self.log_w
        ends = self.lengths - 1
        after = np.arange(self.horizon)[None, :] > ends[:, None]
        matrix = np.where(after, matrix[np.arange(self.n_episodes), ends][:, None], matrix)
        self.step_log_w = matrix  # [E, H] log w_t, −inf for zero weights
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = np.exp(matrix - np.max(matrix, axis=0))
            self.step_ess = np.sum(scaled, axis=0) ** 2 / np.sum(scaled**2, axis=0)
        self.step_ess = np.where(np.isfinite(self.step_ess), self.step_ess, 0.0)

    def per_episode(self, rows: np.ndarray) -> np.ndarray:
        """Row values [b, N] summed per episode: [b, E]."""
        return np.add.reduceat(rows, self.starts, axis=1)

    def step_terms(
        self, q_logged: np.ndarray, v_target: np.ndarray, counts: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """(WDR, j-step returns [J]) of one resample (`counts` [E]) with these model predictions."""
        terms = _StepTerms.build(
            self.episode,
            self.step,
            self.lengths,
            self.log_w,
            self.log_w_prev,
            self.discount * (self.reward - q_logged),
            self.discount * v_target,
        )
        with np.errstate(all="ignore"):
            means = counts @ terms.column_block(counts) / self.n_episodes
            wdr, g = step_returns(means, self.horizon, self.truncations)
        return float(wdr), g


def refit_bootstrap(
    design: LinearDesign,
    weights: np.ndarray,
    point_q_logged: np.ndarray,
    point_v_target: np.ndarray,
    config: EvaluationConfig,
) -> RefitBootstrap:
    """Every estimator on `config.bootstrap_samples` episode resamples with both models refitted.

    `weights` are the per-decision importance weights of the logged actions; `point_*` FQE's
    cross-fitted predictions on the full data (for MAGIC's point blend). Values are those of
    `evaluation.estimators`/`evaluation.sequential`: one-step ones per decision, sequential ones
    and FQE per episode (discounted by `config.gamma`).
    """
    w = np.asarray(weights, dtype=np.float64)
    r = design.reward
    ep = design.episode
    episodes = _Episodes(ep, w, r, config.gamma)
    n, n_episodes = r.size, episodes.n_episodes
    kept = w <= config.switch_threshold
    samples = config.bootstrap_samples
    values: dict[str, np.ndarray] = {
        name: np.empty(samples)
        for name in (*ONE_STEP_VALUE, "pdis", "sequential_dr", "wdr", "fqe", "logged", "logged_return")
    }
    g_all = np.empty((samples, episodes.truncations.size))
    batch = max(1, min(samples, _MAX_BATCH_FLOATS // max(n, 1)))
    blocks = DesignBlocks(design)
    for start, counts in bootstrap_counts(n_episodes, samples, config.seed):
        for first in range(0, counts.shape[0], batch):
            c = counts[first : first + batch].astype(np.float64)
            rows = slice(start + first, start + first + c.shape[0])
            resamples = np.arange(start + first, start + first + c.shape[0])
            fits = refit_predictions(
                design, c, config.gamma, config.reward_model, config.fqe, config.seed, resamples, blocks
            )
            row_w = c[:, ep]
            decisions = row_w.sum(axis=1)
            residual = w * (r - fits.reward_logged)
            means = (
                np.stack(
                    [
                        row_w @ r,
                        np.sum(row_w * fits.reward_target, axis=1),
                        row_w @ (w * r),
                        row_w @ w,
                        np.sum(row_w * residual, axis=1),
                        np.sum(row_w * residual * kept, axis=1),
                    ],
                    axis=1,
                )
                / decisions[:, None]
            )
            with np.errstate(all="ignore"):
                for name, value_of in ONE_STEP_VALUE.items():
                    values[name][rows] = value_of(means)
                values["logged"][rows] = means[:, 0]
                seq_terms = episodes.discount * (
                    episodes.w * (r - fits.q_logged) + episodes.w_prev * fits.v_target
                )
                values["sequential_dr"][rows] = (
                    np.sum(c * episodes.per_episode(seq_terms), axis=1) / n_episodes
                )
                values["pdis"][rows] = c @ episodes.pdis / n_episodes
            values["logged_return"][rows] = c @ episodes.logged_return / n_episodes
            values["fqe"][rows] = np.sum(c * fits.v_target[:, episodes.starts], axis=1) / n_episodes
            for s in range(c.shape[0]):
                wdr, g = episodes.step_terms(fits.q_logged[s], fits.v_target[s], c[s])
                values["wdr"][start + first + s] = wdr
                g_all[start + first + s] = g

    # MAGIC: re-select the blend on every resample (Ω from all of them, bias against WDR's interval
    # re-centred on the resample's WDR), so its interval holds the selection noise as well.
    _, g_point = episodes.step_terms(point_q_logged, point_v_target, np.ones(n_episodes))
    wdr_point = float(g_point[-1])
    finite = np.all(np.isfinite(g_all), axis=1)
    omega = (
        np.atleast_2d(np.cov(g_all[finite], rowvar=False)) if finite.sum() >= 2 else np.full((1, 1), np.nan)
    )
    low, high = interval(values["wdr"], config.confidence)
    magic = np.full(samples, np.nan)
    for s in np.flatnonzero(finite):
        shift = values["wdr"][s] - wdr_point
        magic[s] = g_all[s] @ magic_blend_weights(g_all[s], omega, low + shift, high + shift)
    values["magic"] = magic
    blend = magic_blend_weights(g_point, omega, low, high)
    magic_value = float(g_point @ blend)
    # The heaviest weights MAGIC relies on: those of its deepest j-step return with any blend weight
    # (a cumulative weight multiplies more ratios the deeper the step); FQE alone (j = −1) uses none.
    deepest = int(episodes.truncations[np.flatnonzero(blend > 0.0).max()])
    magic_pareto_k = pareto_k(episodes.step_log_w[:, deepest]) if deepest >= 0 else None
    logged_return = float(episodes.logged_return.mean())
    # The ESS behind g^(j): that of the weights at step j; g^(−1) (FQE alone) uses none, so all E.
    j_ess = np.array(
        [n_episodes if j < 0 else episodes.step_ess[j] for j in episodes.truncations], dtype=float
    )
    light = np.flatnonzero(j_ess >= max(SHORT_HORIZON_MIN_ESS, SHORT_HORIZON_MIN_SHARE * n_episodes))
    light = light[light > 0]
    short = None
    if light.size:
        k = int(light.max())
        short = ShortHorizonCheck(
            steps=int(episodes.truncations[k]) + 1,
            effective_sample_size=float(j_ess[k]),
            differences=g_all[:, k] - g_all[:, 0],
        )

    replicates: dict[str, Replicates] = {}
    for name, v in values.items():
        if name in ("logged", "logged_return"):
            continue
        logged = values["logged"] if name in ONE_STEP_VALUE else values["logged_return"]
        replicates[name] = Replicates(values=v, normalized=relative_to_logged(v, logged))
    return RefitBootstrap(
        replicates=replicates,
        magic_value=magic_value,
        magic_normalized=float(relative_to_logged(magic_value, logged_return)),
        magic_effective_sample_size=float(blend @ j_ess),
        magic_pareto_k=magic_pareto_k,
        short_horizon=short,
    )
