"""Sequential estimators over whole episodes: per-decision IS, sequential DR, weighted DR, MAGIC.

Rows are grouped by episode and ordered by step; `episode_index` gives each row's episode as
0..E−1 (non-decreasing). With cumulative weights w_t = Π_{k≤t} π_k/μ_k (w_{−1} = 1),
v̂(x) = Σ_a π(a|x) q̂(x,a) and q̂ ideally the target policy's long-term Q (e.g. from FQE):

- PDIS  (Precup 2000):        Σ_t γ^t w_t r_t per episode, averaged.
- SeqDR (Jiang & Li 2016):    Σ_t γ^t [w_t (r_t − q̂_t) + w_{t−1} v̂_t] per episode, averaged.
- WDR   (Thomas & Brunskill): SeqDR with w_t / n replaced by w_t / Σ_episodes w_t (self-normalized
  per step; episodes that ended keep their last weight, as in an absorbing state).
- MAGIC (Thomas & Brunskill): the convex blend of the off-policy j-step returns g^(j) (WDR up to
  step j, model value after it; g^(−1) = DM, g^(H−1) = WDR) minimizing the bootstrap estimate of
  variance + squared bias, the bias of g^(j) being its distance to WDR's interval.

All four are functions of per-episode column means, so they share one bootstrap over episodes.
MAGIC's interval applies its chosen blend to the resampled j-step returns (the blend's own
selection noise is not resampled) and is widened to at least WDR's interval around its value.

Long horizons: w_t is a product of up to H ratios and leaves float64 (e^{±709}) within a few
hundred steps. WDR and MAGIC only use w_t / Σ_episodes w_t, so they are computed from log w_t with
every episode's weight at step t divided by the largest one (per bootstrap resample where the
others would underflow): exact, and finite whenever the inputs are. PDIS and sequential DR need
w_t itself; when it overflows they are reported unavailable (`Estimate.available`), with the
largest log weight, rather than as a NaN that reads like corrupt input.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from evaluation.errors import EvaluationError
from evaluation.estimators import (
    Estimate,
    EstimatorSpec,
    bootstrap_column_means,
    bootstrap_counts,
    bootstrapped_estimates,
    check_confidence,
    importance_weights,
    interval,
    logged_columns,
    mark_unavailable,
)
from evaluation.pareto import pareto_k

SEQUENTIAL_ESTIMATORS = ("pdis", "sequential_dr", "wdr", "magic")
# MAGIC blends at most this many j-step returns (Horizon used 25), spread over the horizon.
MAGIC_TRUNCATIONS = 25
# log of the largest float64 (≈ 709.78): a weight, or a value, beyond exp(this) is inf.
LOG_FLOAT64_MAX = float(np.log(np.finfo(np.float64).max))
# Weight of the Σx = 1 row in MAGIC's least-squares blend (the objective is scaled to at most 1).
_SIMPLEX_ROW_WEIGHT = 1e3


def _episode_layout(episode_index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first row of each episode, step of each row, episode lengths); validates the grouping."""
    ep = np.asarray(episode_index, dtype=np.int64)
    if ep.shape != (n,):
        raise EvaluationError(f"episode_index must have shape ({n},), got {ep.shape}")
    steps = np.diff(ep)
    if ep[0] != 0 or np.any(steps < 0) or np.any(steps > 1):
        raise EvaluationError(
            "episode_index must be 0..E-1, grouped and non-decreasing (sort rows by episode, step)"
        )
    starts = np.flatnonzero(np.r_[True, steps > 0])
    lengths = np.diff(np.r_[starts, n])
    return starts, np.arange(n) - starts[ep], lengths


def cumulative_log_weights(episode_index: np.ndarray, rho: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """log w_t = Σ_{k≤t} log ρ_k within each episode; −inf from a zero ρ on (zeros counted apart)."""
    positive = rho > 0.0
    log_rho = np.where(positive, np.log(np.where(positive, rho, 1.0)), 0.0)
    cum_log = np.cumsum(log_rho)
    cum_zero = np.cumsum(~positive)
    base_log = (cum_log - log_rho)[starts][episode_index]
    base_zero = (cum_zero - ~positive)[starts][episode_index]
    return np.where(cum_zero - base_zero == 0, cum_log - base_log, -np.inf)


def cumulative_weights(episode_index: np.ndarray, rho: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """w_t = Π_{k≤t} ρ_k within each episode (inf where it exceeds float64)."""
    with np.errstate(over="ignore"):
        return np.exp(cumulative_log_weights(episode_index, rho, starts))


def _truncation_points(horizon: int) -> np.ndarray:
    """j ∈ {−1, …, H−1}, thinned to MAGIC_TRUNCATIONS points (always keeping −1 and H−1)."""
    if horizon + 1 <= MAGIC_TRUNCATIONS:
        return np.arange(-1, horizon)
    return np.unique(np.round(np.linspace(-1, horizon - 1, MAGIC_TRUNCATIONS)).astype(np.int64))


def _magic_blend(g_point: np.ndarray, g_boot: np.ndarray, confidence: float) -> np.ndarray:
    """Weights x on the simplex minimizing xᵀ(Ω + b bᵀ)x (Ω bootstrap covariance, b bias vs WDR CI)."""
    finite = np.all(np.isfinite(g_boot), axis=1)
    if finite.sum() < 2:  # no covariance: magic_blend_weights falls back to WDR
        return magic_blend_weights(g_point, np.full((g_point.size, g_point.size), np.nan), np.nan, np.nan)
    omega = np.atleast_2d(np.cov(g_boot[finite], rowvar=False))
    low, high = interval(g_boot[finite, -1], confidence)
    return magic_blend_weights(g_point, omega, low, high)


def magic_blend_weights(g: np.ndarray, omega: np.ndarray, low: float, high: float) -> np.ndarray:
    """MAGIC's blend of the j-step returns `g` [J]: x on the simplex minimizing xᵀ(Ω + b bᵀ)x, the
    bias b_j being g_j's distance to WDR's interval [low, high] (g's last entry is WDR itself).
    Any non-finite input: all weight on WDR, whose own non-finite value then flags the estimate."""
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(omega)) and np.isfinite(low) and np.isfinite(high)):
        x = np.zeros(g.size)
        x[-1] = 1.0
        return x
    bias = np.where(g < low, low - g, np.where(g > high, g - high, 0.0))
    matrix = omega + np.outer(bias, bias)
    matrix = matrix / (float(np.max(np.abs(matrix))) or 1.0)
    # xᵀMx = ‖Rᵀx‖² with M = R Rᵀ; the simplex's Σx = 1 enters as one heavily weighted row, and
    # non-negative least squares (Lawson–Hanson, exact) keeps x ≥ 0.
    eigenvalues, vectors = np.linalg.eigh(matrix)
    root = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    k = g.size
    system = np.vstack([root.T, _SIMPLEX_ROW_WEIGHT * np.ones((1, k))])
    x, _ = nnls(system, np.r_[np.zeros(k), _SIMPLEX_ROW_WEIGHT], maxiter=50 * k)
    if not x.sum() > 0.0:
        x = np.zeros(k)
        x[-1] = 1.0
    return x / x.sum()


def step_returns(m: np.ndarray, horizon: int, truncations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(WDR [...], j-step returns g^(j) [..., J]) from the means of `_StepTerms.column_block()`.

    a_t = mean A_t / mean W_t, b_t = mean B_t / mean W_{t−1} (W_{−1} = 1); WDR = Σ_t (a_t + b_t) and
    g^(j) = Σ_{t≤j} (a_t + b_t) + b_{j+1} for each truncation j."""
    a_cols, b_cols = m[..., :horizon], m[..., horizon : 2 * horizon]
    weights = m[..., 2 * horizon : 3 * horizon]
    previous = np.concatenate([np.ones_like(weights[..., :1]), weights[..., :-1]], axis=-1)
    a_t, b_t = a_cols / weights, b_cols / previous
    partial = np.concatenate([np.zeros_like(a_t[..., :1]), np.cumsum(a_t + b_t, axis=-1)], axis=-1)
    tail = np.concatenate([b_t, np.zeros_like(b_t[..., :1])], axis=-1)
    return np.sum(a_t + b_t, axis=-1), partial[..., truncations + 1] + tail[..., truncations + 1]


def sequential_estimates(
    episode_index: np.ndarray,
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
    names: tuple[str, ...] = SEQUENTIAL_ESTIMATORS,
) -> dict[str, Estimate]:
    """PDIS, sequential DR, WDR and MAGIC per episode on one shared bootstrap over episodes.

    Values are discounted returns per episode; normalized by the mean discounted logged return.
    `weighted_sequential_estimates` checks the names, gamma and the bootstrap options.
    """
    pi, a, mu, r = logged_columns(target_probs, logged_action, logged_propensity, reward)
    q = np.asarray(q_hat, dtype=np.float64)
    if q.shape != pi.shape:
        raise EvaluationError(f"q_hat {q.shape} must have the shape of target_probs {pi.shape}")
    if not np.all(np.isfinite(q)):  # before E_π q̂ is formed from it
        raise EvaluationError("q_hat has non-finite values; check the reward or FQE model's inputs")
    rows = np.arange(pi.shape[0])
    return weighted_sequential_estimates(
        episode_index,
        importance_weights(pi, a, mu),
        np.sum(pi * q, axis=1),
        q[rows, a],
        r,
        mu,
        gamma,
        confidence=confidence,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        names=names,
    )


def weighted_sequential_estimates(
    episode_index: np.ndarray,
    rho: np.ndarray,
    v_hat: np.ndarray,
    q_logged: np.ndarray,
    reward: np.ndarray,
    propensity: np.ndarray,
    gamma: float,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
    names: tuple[str, ...] = SEQUENTIAL_ESTIMATORS,
) -> dict[str, Estimate]:
    """The sequential estimators from per-decision pieces, whatever the action kind made them from.

    `rho` the per-step weight of the logged action (kernel-smoothed for continuous actions),
    `v_hat` E_π q̂(x_t, ·), `q_logged` q̂(x_t, a_t), `propensity` the logged μ (diagnostics only).
    """
    unknown = [n for n in names if n not in SEQUENTIAL_ESTIMATORS]
    if unknown:
        raise EvaluationError(f"unknown sequential estimators {unknown}; choose from {SEQUENTIAL_ESTIMATORS}")
    rho = np.asarray(rho, dtype=np.float64)
    v_hat = np.asarray(v_hat, dtype=np.float64)
    q_logged = np.asarray(q_logged, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    mu = np.asarray(propensity, dtype=np.float64)
    n = rho.shape[0]
    for name, arr in (("v_hat", v_hat), ("q_logged", q_logged), ("reward", r), ("propensity", mu)):
        if arr.shape != (n,):
            raise EvaluationError(f"{name} must have shape ({n},) to match rho, got {arr.shape}")
    if not (np.all(np.isfinite(v_hat)) and np.all(np.isfinite(q_logged))):
        raise EvaluationError("q_hat has non-finite values; check the reward or FQE model's inputs")
    bad = np.flatnonzero(~(np.isfinite(rho) & (rho >= 0.0)))
    if bad.size:
        raise EvaluationError(
            f"per-step weights rho must be finite and ≥ 0; {bad.size} are not, e.g. rows {bad[:5].tolist()} = "
            f"{rho[bad[:5]].tolist()}; check the logged propensities and the target policy's outputs"
        )
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise EvaluationError(f"reward must be finite; {bad.size} are not, e.g. rows {bad[:5].tolist()}")
    if not 0.0 <= gamma <= 1.0:
        raise EvaluationError(f"gamma must be in [0, 1], got {gamma}")
    check_confidence(confidence, bootstrap_samples)
    ep = np.asarray(episode_index, dtype=np.int64)
    starts, step, lengths = _episode_layout(ep, n)
    n_episodes, horizon = lengths.size, int(lengths.max())

    log_w = cumulative_log_weights(ep, rho, starts)
    log_w_prev = np.where(step == 0, 0.0, np.r_[0.0, log_w[:-1]])
    with np.errstate(over="ignore"):
        w, w_prev = np.exp(log_w), np.exp(log_w_prev)  # inf beyond float64: PDIS/SeqDR unavailable
    discount = gamma**step
    with np.errstate(invalid="ignore", over="ignore"):
        pdis = np.bincount(ep, weights=discount * w * r, minlength=n_episodes)
        seq_dr = np.bincount(
            ep, weights=discount * w * (r - q_logged) + discount * w_prev * v_hat, minlength=n_episodes
        )
    logged_return = np.bincount(ep, weights=discount * r, minlength=n_episodes)

    steps = _StepTerms.build(
        ep, step, lengths, log_w, log_w_prev, discount * (r - q_logged), discount * v_hat
    )
    columns = np.hstack([np.stack([logged_return, pdis, seq_dr], axis=1), steps.column_block()])
    w_cols = 3 + 2 * horizon
    truncations = _truncation_points(horizon)

    def j_step_returns(m: np.ndarray) -> np.ndarray:
        return step_returns(m[..., 3:], horizon, truncations)[1]

    def wdr(m: np.ndarray) -> np.ndarray:
        return step_returns(m[..., 3:], horizon, truncations)[0]

    # ESS is scale-free: computed on the final weights divided by the largest (finite at any horizon).
    final_log = log_w[starts + lengths - 1]
    final_top = float(final_log.max())
    final_weight = np.exp(final_log - final_top) if np.isfinite(final_top) else np.zeros(n_episodes)
    # The tail of the episodes' final weights, from their logs (finite at any horizon); the
    # heaviest weights each of these estimators carries (an ended episode keeps its last weight).
    tail = pareto_k(final_log)
    specs: dict[str, EstimatorSpec] = {
        "pdis": EstimatorSpec(value_of=lambda m: m[..., 1], weights=final_weight, pareto_k=tail),
        "sequential_dr": EstimatorSpec(value_of=lambda m: m[..., 2], weights=final_weight, pareto_k=tail),
        "wdr": EstimatorSpec(value_of=wdr, weights=final_weight, pareto_k=tail),
    }
    with np.errstate(invalid="ignore", over="ignore"):  # overflowing PDIS/SeqDR columns: reported below
        boot = bootstrap_column_means(columns, bootstrap_samples, seed)
    steps.rescale_underflowing_resamples(boot, 3, seed)
    if "magic" in names:
        with np.errstate(all="ignore"):
            point = columns.mean(axis=0)
            blend = _magic_blend(j_step_returns(point), j_step_returns(boot), confidence)
        specs["magic"] = EstimatorSpec(
            value_of=lambda m: j_step_returns(m) @ blend, weights=final_weight, pareto_k=tail
        )
    chosen = {name: specs[name] for name in set(names) | ({"wdr"} if "magic" in names else set())}
    out = bootstrapped_estimates(chosen, columns, mu, confidence, bootstrap_samples, seed, boot=boot)
    if "magic" in out and _finite(out["magic"]) and _finite(out["wdr"]):
        out["magic"] = _widen_to_wdr(out["magic"], out["wdr"])

    max_log = float(log_w.max())  # −inf when every weight is 0
    weight_fields = {
        "max_weight": float(np.exp(max_log)) if max_log <= LOG_FLOAT64_MAX else None,
        "max_log_weight": max_log if np.isfinite(max_log) else None,
    }
    # Largest |term| PDIS and SeqDR sum, weights aside: with n·H such terms, weights up to e^max_log
    # can carry a sum past float64 only if max_log + log(term) + log(n·H) > log(float64 max).
    with np.errstate(divide="ignore"):
        overflow_bound = {
            name: max_log + np.log(float(np.max(term))) + np.log(n_episodes * horizon)
            for name, term in (
                ("pdis", np.abs(discount * r)),
                ("sequential_dr", np.abs(discount * (r - q_logged)) + np.abs(discount * v_hat)),
            )
        }
    with np.errstate(all="ignore"):
        unreached = np.flatnonzero(~(columns[:, w_cols : w_cols + horizon].sum(axis=0) > 0.0))
        undefined_resamples = int(np.sum(~np.isfinite(wdr(boot))))
    result: dict[str, Estimate] = {}
    for name in names:
        estimate = out[name].model_copy(update=weight_fields)
        if _finite(estimate):
            result[name] = estimate
        elif name in overflow_bound and max_log > 0.0 and overflow_bound[name] > LOG_FLOAT64_MAX:
            result[name] = mark_unavailable(
                estimate,
                f"{name}: cumulative importance weights reach exp({max_log:.1f}) over episodes of up to "
                f"{horizon} steps (float64 ends at exp({LOG_FLOAT64_MAX:.1f})), so the estimate overflows "
                "and cannot be computed for this horizon; wdr and magic, self-normalized per step, can",
            )
        elif name in ("wdr", "magic") and unreached.size:
            result[name] = mark_unavailable(
                estimate,
                f"{name}: no episode keeps a positive importance weight through step {unreached[0]} (the "
                "target policy never takes the logged actions that far), so the per-step self-normalized "
                "weights are undefined and the estimator cannot be computed for these data",
            )
        elif name in ("wdr", "magic") and undefined_resamples:
            # The value stands; only resamples that lack the few supported episodes are undefined.
            warning = (
                f"{name}: in {undefined_resamples} of {bootstrap_samples} bootstrap resamples no episode "
                "keeps a positive importance weight at some step (too few episodes follow the target "
                "policy that far), so the interval is undefined"
            )
            result[name] = estimate.model_copy(update={"warnings": [*estimate.warnings, warning]})
        else:  # non-finite for another reason than the weights' magnitude: left for the gate to flag
            result[name] = estimate
    return result


def _finite(estimate: Estimate) -> bool:
    numbers = (estimate.value, estimate.ci_low, estimate.ci_high)
    return all(v is not None and np.isfinite(v) for v in numbers)


class _StepTerms:
    """WDR's per-step columns [E, H] from log weights, each step scaled by a common constant.

    A_t = γ^t w_t (r_t − q̂_t), B_t = γ^t w_{t−1} v̂_t and W_t = w_t (kept at the episode's last
    weight after it ends, as in an absorbing state), with w_t and W_t divided by c_t and w_{t−1}
    by c_{t−1}. WDR uses mean A_t / mean W_t and mean B_t / mean W_{t−1}, so any c_t cancels; taking
    c_t = the largest weight at step t keeps every scaled weight in [0, 1] at any horizon.
    """

    def __init__(
        self,
        log_w: np.ndarray,
        log_w_prev: np.ndarray,
        a_value: np.ndarray,
        b_value: np.ndarray,
    ) -> None:
        self.log_w, self.log_w_prev = log_w, log_w_prev  # [E, H]; −inf for weight 0 / no term
        self.a_value, self.b_value = a_value, b_value  # [E, H] the terms' γ^t (r − q̂), γ^t v̂; 0 after the end

    @classmethod
    def build(
        cls,
        ep: np.ndarray,
        step: np.ndarray,
        lengths: np.ndarray,
        log_w: np.ndarray,
        log_w_prev: np.ndarray,
        a_value: np.ndarray,
        b_value: np.ndarray,
    ) -> _StepTerms:
        shape = (lengths.size, int(lengths.max()))
        log_w_mat = np.full(shape, -np.inf)
        log_prev_mat = np.full(shape, -np.inf)
        a_mat, b_mat = np.zeros(shape), np.zeros(shape)
        log_w_mat[ep, step], log_prev_mat[ep, step] = log_w, log_w_prev
        a_mat[ep, step], b_mat[ep, step] = a_value, b_value
        final = log_w_mat[np.arange(lengths.size), lengths - 1]
        after_end = np.arange(shape[1])[None, :] >= lengths[:, None]
        log_w_mat = np.where(after_end, final[:, None], log_w_mat)
        return cls(log_w_mat, log_prev_mat, a_mat, b_mat)

    def column_block(self, counts: np.ndarray | None = None) -> np.ndarray:
        """[A | B | W] per episode [E, 3H], scaled by the largest weight per step among the episodes
        with counts > 0 (all of them when `counts` is None)."""
        log_w, log_prev = self.log_w, self.log_w_prev
        if counts is not None:
            log_w = np.where(counts[:, None] > 0, log_w, -np.inf)
            log_prev = np.where(counts[:, None] > 0, log_prev, -np.inf)
        top = np.max(log_w, axis=0)
        top = np.where(np.isfinite(top), top, 0.0)  # no positive weight at step t: the ratio is 0/0
        top_prev = np.r_[0.0, top[:-1]]  # w_{−1} = 1
        scaled = np.exp(log_w - top)
        return np.hstack([scaled * self.a_value, np.exp(log_prev - top_prev) * self.b_value, scaled])

    def rescale_underflowing_resamples(self, boot: np.ndarray, first_column: int, seed: int) -> None:
        """Redo, in place, the step columns of resamples whose mean W_t fell below the smallest normal
        float64 at some step — they lack the episodes near the largest weight, so theirs underflowed
        or lost precision — scaled by their own largest weight.

        `boot` holds the resampled means of [other columns | column_block()] drawn with `seed`."""
        horizon = self.log_w.shape[1]
        n_episodes = self.log_w.shape[0]
        w_cols = slice(first_column + 2 * horizon, first_column + 3 * horizon)
        reachable = np.isfinite(np.max(self.log_w, axis=0))  # some episode has weight > 0 at step t
        redo = np.flatnonzero(np.any((boot[:, w_cols] < np.finfo(np.float64).tiny) & reachable, axis=1))
        if redo.size == 0:
            return
        block = slice(first_column, first_column + 3 * horizon)
        for start, counts in bootstrap_counts(n_episodes, boot.shape[0], seed):
            for s in redo[(redo >= start) & (redo < start + counts.shape[0])]:
                c = counts[s - start].astype(np.float64)
                boot[s, block] = (c @ self.column_block(c)) / n_episodes


def _widen_to_wdr(magic: Estimate, wdr: Estimate) -> Estimate:
    """MAGIC's interval, at least as wide as WDR's around MAGIC's value.

    The blend may lean on the model-based returns whose bootstrap spread ignores the model's own
    error; their bias is only known to within WDR's interval, so the interval cannot be narrower.
    """
    return magic.model_copy(
        update={
            "ci_low": min(magic.ci_low, magic.value - (wdr.value - wdr.ci_low)),
            "ci_high": max(magic.ci_high, magic.value + (wdr.ci_high - wdr.value)),
            "normalized_ci_low": min(
                magic.normalized_ci_low, magic.normalized - (wdr.normalized - wdr.normalized_ci_low)
            ),
            "normalized_ci_high": max(
                magic.normalized_ci_high, magic.normalized + (wdr.normalized_ci_high - wdr.normalized)
            ),
        }
    )


def sequential_doubly_robust(
    episode_index: np.ndarray,
    target_probs: np.ndarray,
    q_hat: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    *,
    confidence: float = 0.95,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> tuple[Estimate, np.ndarray]:
    """Sequential DR (Jiang & Li 2016); returns (estimate, per-episode values).

    An episode's value is Σ_t γ^t [ w_t (r_t − q̂(x_t, a_t)) + w_{t−1} v̂(x_t) ], the unrolled form
    of V_t = v̂(x_t) + ρ_t (r_t + γ V_{t+1} − q̂(x_t, a_t)).
    """
    estimate = sequential_estimates(
        episode_index,
        target_probs,
        q_hat,
        logged_action,
        logged_propensity,
        reward,
        gamma,
        confidence=confidence,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        names=("sequential_dr",),
    )["sequential_dr"]
    pi, a, mu, r = logged_columns(target_probs, logged_action, logged_propensity, reward)
    ep = np.asarray(episode_index, dtype=np.int64)
    starts, step, _ = _episode_layout(ep, pi.shape[0])
    w = cumulative_weights(ep, importance_weights(pi, a, mu), starts)
    w_prev = np.where(step == 0, 1.0, np.r_[1.0, w[:-1]])
    q = np.asarray(q_hat, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        term = gamma**step * (w * (r - q[np.arange(pi.shape[0]), a]) + w_prev * np.sum(pi * q, axis=1))
    return estimate, np.bincount(ep, weights=term, minlength=int(ep[-1]) + 1)
