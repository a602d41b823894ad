"""Refit the reward model and FQE on bootstrap resamples, all resamples solved at once.

Why: DM and FQE are nothing but a fitted model, and DR, sequential DR and MAGIC lean on one. An
interval that resamples the evaluation rows while holding the fitted models fixed ignores the
models' own sampling error, so it is too narrow exactly where the model carries the estimate.
Here every resample refits both models on the resampled episodes, cross-fitted within the
resample, and every estimator is recomputed from the refitted predictions
(`evaluation.intervals`).

Both models are ridge regressions on a fixed design (`LinearDesign`): per-action heads on [1, x]
for discrete actions (x is already second order where the data allow: `kinds.discrete`), one
head on [1, φ(x, a)] for vector actions (`evaluation.joint_models`).
A refit on a resample is therefore the same ridge solve with the resample's episode counts as row
weights, and a batch of resamples is one batched solve. Cross-fitting is kept inside every
resample: each resample draws its own split of the episodes into folds, and each row's prediction
comes from the model fitted on the *resampled* episodes of the other folds — so the intervals also
hold how much the estimate depends on the split. With the point fit's folds and unit counts the
refit reproduces the point fit (tested), so the bootstrap distribution is that of the very
estimator the report prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from evaluation.fqe import RidgeFqeConfig
from evaluation.reward_model import RidgeRewardModelConfig, fold_of_episode

# Per-(episode, head) sums of x xᵀ are kept when they take at most this many floats (~240 MB);
# above it the grams are formed per resample from the rows.
_MAX_OUTER_FLOATS = 30_000_000
# Relative jitter on the diagonal, so a head without training rows still has a solvable system.
_JITTER = 1e-10


@dataclass(frozen=True, slots=True)
class LinearDesign:
    """What both models regress on, fixed across resamples; rows sorted by (episode, step).

    Row i is fitted by head `head[i]` on `base[i]` (column 0 the intercept, unpenalized); the
    target policy's value at row i is Σ_h target_weight[i, h] · target_base[i]·β_h — for discrete
    actions `target_base` = `base` and `target_weight` = π(·|x_i); for one-head (vector) designs
    `target_base` = [1, E_π φ(x_i, a)] and `target_weight` = 1.
    """

    base: np.ndarray
    head: np.ndarray
    target_base: np.ndarray
    target_weight: np.ndarray
    episode: np.ndarray
    reward: np.ndarray

    @classmethod
    def per_action(
        cls,
        features: np.ndarray,
        action: np.ndarray,
        target_probs: np.ndarray,
        episode: np.ndarray,
        reward: np.ndarray,
    ) -> LinearDesign:
        """Discrete actions: one head per action on [1, x] (`evaluation.reward_model`, `evaluation.fqe`);
        the discrete kind passes the state to second order where the data allow (`_model_design`)."""
        x = np.asarray(features, dtype=np.float64)
        base = np.hstack([np.ones((x.shape[0], 1)), x])
        return cls(
            base=base,
            head=np.asarray(action, dtype=np.int64),
            target_base=base,
            target_weight=np.asarray(target_probs, dtype=np.float64),
            episode=np.asarray(episode, dtype=np.int64),
            reward=np.asarray(reward, dtype=np.float64),
        )

    @classmethod
    def joint(
        cls, logged: np.ndarray, target: np.ndarray, episode: np.ndarray, reward: np.ndarray
    ) -> LinearDesign:
        """Vector actions: one head on [1, φ(x, a)], valued at [1, E_π φ(x, a)] (`evaluation.joint_models`)."""
        n = logged.shape[0]
        ones = np.ones((n, 1))
        return cls(
            base=np.hstack([ones, np.asarray(logged, dtype=np.float64)]),
            head=np.zeros(n, dtype=np.int64),
            target_base=np.hstack([ones, np.asarray(target, dtype=np.float64)]),
            target_weight=np.ones((n, 1)),
            episode=np.asarray(episode, dtype=np.int64),
            reward=np.asarray(reward, dtype=np.float64),
        )

    @property
    def n_heads(self) -> int:
        return int(self.target_weight.shape[1])

    @property
    def n_episodes(self) -> int:
        return int(self.episode.max()) + 1 if self.episode.size else 0


@dataclass(frozen=True, slots=True)
class RefitPredictions:
    """Cross-fitted predictions of one batch of resamples, [b, N] each (every row, every resample).

    `reward_logged`/`reward_target`: the immediate-reward model at the logged action and under the
    target; `q_logged`/`v_target`: FQE's Q^π the same way.
    """

    reward_logged: np.ndarray
    reward_target: np.ndarray
    q_logged: np.ndarray
    v_target: np.ndarray


@dataclass(frozen=True, slots=True)
class _Fold:
    grams: np.ndarray  # [b, H, P, P]
    train_weight: np.ndarray  # [b, N]: the resample's count of each training row, 0 elsewhere
    sizes: np.ndarray  # [b, H]: weighted training rows per head


class DesignBlocks:
    """What every refit of one design shares, whatever the resample: computed once per evaluation
    (`blocks`), not per batch of resamples."""

    def __init__(self, design: LinearDesign) -> None:
        d = design
        n_p = d.base.shape[1]
        n = d.reward.size
        self.rows_of_head = [np.flatnonzero(d.head == h) for h in range(d.n_heads)]
        # Row i's design in its head's block of [H·P] (zeros elsewhere), and the target's weighted
        # designs in every block: one matrix product then serves all heads and all resamples.
        self.head_indicator = np.zeros((n, d.n_heads))
        self.head_indicator[np.arange(n), d.head] = 1.0
        self.logged_blocks = (self.head_indicator[:, :, None] * d.base[:, None, :]).reshape(n, -1)
        self.target_blocks = (d.target_weight[:, :, None] * d.target_base[:, None, :]).reshape(n, -1)
        self.outer: np.ndarray | None = None
        if d.n_episodes * d.n_heads * n_p * n_p <= _MAX_OUTER_FLOATS:
            # Σ over each (episode, head)'s rows of x xᵀ: [E, H, P²], so a gram is counts @ this.
            key = d.episode * d.n_heads + d.head
            group = sparse.csr_matrix((np.ones(n), (key, np.arange(n))), shape=(d.n_episodes * d.n_heads, n))
            outer = (d.base[:, :, None] * d.base[:, None, :]).reshape(n, n_p * n_p)
            self.outer = np.asarray(group @ outer).reshape(d.n_episodes, d.n_heads, n_p * n_p)


class _Ridge:
    """Weighted per-head ridge solves for a batch of resamples, with the pooled fallback of
    `fit_action_heads` for heads with fewer than `min_rows` (weighted) training rows."""

    def __init__(self, design: LinearDesign, counts: np.ndarray, blocks: DesignBlocks) -> None:
        self.design = design
        self.counts = counts  # [b, E]
        self.row_weight = counts[:, design.episode]  # [b, N]
        self.blocks = blocks

    def grams(self, train_episodes: np.ndarray) -> np.ndarray:
        """[b, H, P, P]: Σ_i c_i x_i x_iᵀ over the training rows of each head."""
        d = self.design
        n_p = d.base.shape[1]
        b = self.counts.shape[0]
        weights = self.counts * train_episodes  # [b, E] (train_episodes [E] or [b, E])
        if self.blocks.outer is not None:
            out = np.einsum("be,ehk->bhk", weights, self.blocks.outer)
            return out.reshape(b, d.n_heads, n_p, n_p)
        out = np.zeros((b, d.n_heads, n_p, n_p))
        row_w = weights[:, d.episode]
        for h, rows in enumerate(self.blocks.rows_of_head):
            x = d.base[rows]
            for s in range(b):
                out[s, h] = (x * row_w[s, rows, None]).T @ x
        return out

    def fold(self, train_rows: np.ndarray, train_episodes: np.ndarray) -> _Fold:
        """What every solve on these training rows shares: grams, row weights, rows per head."""
        train_weight = self.row_weight * train_rows  # [b, N]
        return _Fold(self.grams(train_episodes), train_weight, train_weight @ self.blocks.head_indicator)

    def solve(self, fold: _Fold, y: np.ndarray, l2: float, min_rows: int) -> np.ndarray:
        """β [b, H, P] of ridge (slopes penalized by `l2`, intercept not) on the weighted training rows."""
        grams, sizes = fold.grams, fold.sizes
        b, n_heads, n_p, _ = grams.shape
        rhs = ((fold.train_weight * y) @ self.blocks.logged_blocks).reshape(b, n_heads, n_p)
        penalty = np.full(n_p, l2)
        penalty[0] = 0.0
        pooled = _ridge_solve(grams.sum(axis=1), rhs.sum(axis=1), penalty)
        beta = _ridge_solve(grams, rhs, penalty)
        sparse = sizes < min_rows
        beta[sparse] = np.broadcast_to(pooled[:, None, :], beta.shape)[sparse]
        return beta

    def predict_logged(self, beta: np.ndarray) -> np.ndarray:
        """x_i·β_{head i} for every row: [b, N]."""
        return beta.reshape(beta.shape[0], -1) @ self.blocks.logged_blocks.T

    def predict_target(self, beta: np.ndarray) -> np.ndarray:
        """Σ_h target_weight[i, h]·target_base[i]·β_h for every row: [b, N]."""
        return beta.reshape(beta.shape[0], -1) @ self.blocks.target_blocks.T


def _ridge_solve(grams: np.ndarray, rhs: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(np.diagonal(grams, axis1=-2, axis2=-1)).max(axis=-1, keepdims=True), 1.0)
    system = grams.copy()
    diagonal = np.arange(penalty.size)
    system[..., diagonal, diagonal] += penalty + _JITTER * scale
    return np.linalg.solve(system, rhs[..., None])[..., 0]


def episode_folds(
    n_episodes: int, folds: int, seed: int, resamples: np.ndarray | None, episode: np.ndarray
) -> np.ndarray:
    """The fold of every episode, [b, E]: the point fit's (`fold_of_episode`) in every row when
    `resamples` is None, else a fresh random split per resample (seeded by its index), so the
    intervals also hold how much the estimate depends on the split."""
    if resamples is None:
        fold = fold_of_episode(episode, folds, seed)
        return fold[np.r_[0, np.flatnonzero(np.diff(episode)) + 1]][None, :]
    return np.stack(
        [np.random.default_rng([seed, 0xF01D, int(s)]).permutation(n_episodes) % folds for s in resamples]
    )


def refit_predictions(
    design: LinearDesign,
    counts: np.ndarray,
    gamma: float,
    reward_config: RidgeRewardModelConfig,
    fqe_config: RidgeFqeConfig,
    seed: int,
    resamples: np.ndarray | None = None,
    blocks: DesignBlocks | None = None,
) -> RefitPredictions:
    """Both models refitted on each resample (`counts` [b, E]: how often each episode is drawn).

    Mirrors `cross_fit_reward_model`/`fitted_q_evaluation` (and their joint versions): same
    iterations, same fallbacks (the mean reward when there are fewer episodes than folds; the
    pooled fit for heads with fewer than `min_rows_per_action` rows). Folds: the point fit's when
    `resamples` (the resamples' indices, [b]) is None — then unit counts reproduce the point fit —
    else a fresh split per resample (`episode_folds`). `blocks`: the design's `DesignBlocks`, when
    the caller refits the same design for several batches.
    """
    d = design
    counts = np.asarray(counts, dtype=np.float64)
    n = d.reward.size
    b = counts.shape[0]
    ridge = _Ridge(d, counts, blocks or DesignBlocks(d))
    out = {name: np.empty((b, n)) for name in ("reward_logged", "reward_target", "q_logged", "v_target")}

    if d.n_episodes < reward_config.folds:
        mean = (ridge.row_weight @ d.reward) / ridge.row_weight.sum(axis=1)
        out["reward_logged"][:] = out["reward_target"][:] = mean[:, None]
    else:
        fold_of = episode_folds(d.n_episodes, reward_config.folds, seed, resamples, d.episode)
        for k in range(reward_config.folds):
            train_episodes = fold_of != k
            train_rows = train_episodes[:, d.episode]
            shared = ridge.fold(train_rows, train_episodes)
            beta = ridge.solve(shared, d.reward, reward_config.l2, reward_config.min_rows_per_action)
            test = ~train_rows
            np.copyto(out["reward_logged"], ridge.predict_logged(beta), where=test)
            np.copyto(out["reward_target"], ridge.predict_target(beta), where=test)

    if d.n_episodes < fqe_config.folds:
        mean = (ridge.row_weight @ d.reward) / ridge.row_weight.sum(axis=1)
        value = mean / (1.0 - gamma) if gamma < 1.0 else mean
        out["q_logged"][:] = out["v_target"][:] = value[:, None]
    else:
        has_next = np.r_[d.episode[1:] == d.episode[:-1], False]
        iterations = int(min(fqe_config.iterations, np.bincount(d.episode).max()))
        fold_of = episode_folds(d.n_episodes, fqe_config.folds, seed, resamples, d.episode)
        for k in range(fqe_config.folds):
            train_episodes = fold_of != k
            train_rows = train_episodes[:, d.episode]
            shared = ridge.fold(train_rows, train_episodes)
            v_next = np.zeros((b, n))  # the current model's E_π Q at each row's next step (0 at the end)
            beta = np.zeros((b, d.n_heads, d.base.shape[1]))
            for _ in range(iterations):
                y = d.reward + gamma * v_next
                beta = ridge.solve(shared, y, fqe_config.l2, fqe_config.min_rows_per_action)
                v_next[:, :-1] = ridge.predict_target(beta)[:, 1:] * has_next[:-1]
            test = ~train_rows
            np.copyto(out["q_logged"], ridge.predict_logged(beta), where=test)
            np.copyto(out["v_target"], ridge.predict_target(beta), where=test)
    return RefitPredictions(**out)
