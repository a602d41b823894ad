"""Kernel-smoothed importance weights for continuous actions (Kallus & Zhou 2018).

A continuous target policy almost never takes exactly the logged action, so π(a|x)/μ(a|x) is
either undefined (a deterministic target) or explodes (a near-deterministic one). Kallus & Zhou
("Policy Evaluation and Optimization with Continuous Treatments", AISTATS 2018) replace the
point mass of the target action by a kernel of bandwidth h:

    w_i = K_h(π(x_i) − a_i) / μ(a_i | x_i),     K_h(u) = Π_j φ(u_j / h_j) / h_j   (Gaussian, per dimension)

For a stochastic target the kernel is averaged over M draws a'_m ~ π(·|x_i) — the density at
a_i of the target smoothed by K_h — which is the same formula for a deterministic target (all
draws equal its mean) and tends to the plain density ratio π/μ as h → 0. IPS, SNIPS and DR are
then the usual one-step formulas on these weights; the price is a bias O(h²) (the value of the
smoothed target instead of the target), which DR mostly removes through its reward model.

Bandwidth rule (Silverman's normal reference, per action dimension j):

    h_j = (4 / (D + 2))^(1/(D+4)) · σ̂_j · n^(−1/(D+4))         (1.06 σ̂ n^(−1/5) for D = 1)

σ̂_j is a robust scale, min(std, IQR / 1.349), of the offsets a_ij − m_j(x_i) between the logged
actions and the target's mean action: how far the logged actions spread around the action
being evaluated. n^(−1/(D+4)) is the MSE-optimal rate of Kallus & Zhou's kernel estimators
(bias h², variance 1/(n h^D)). `KernelConfig.bandwidth_scale` multiplies the rule, and fixed
per-dimension bandwidths can be given instead.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import EvaluationError
from evaluation.estimators import effective_sample_size

SILVERMAN_RULE = (
    "silverman: h_j = (4/(D+2))^(1/(D+4)) · min(std, IQR/1.349) of (a_j − target mean_j) · n^(−1/(D+4))"
)


class KernelConfig(BaseModel):
    """How continuous-action CPE smooths the target: bandwidth rule and target draws per decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bandwidth_scale: float = Field(1.0, gt=0.0, description="multiplies the Silverman bandwidth")
    bandwidth: list[float] | None = Field(
        None, description="fixed bandwidth per action dimension in env units; overrides the rule"
    )
    target_samples: int = Field(
        32, ge=1, le=1024, description="draws from the served policy per decision (kernel average, DM term)"
    )


class KernelSmoothing(BaseModel):
    """What the report says about the kernel: rule, bandwidth and how many decisions the weights use."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    kernel: Literal["gaussian"] = "gaussian"
    rule: str
    bandwidth: list[float] = Field(description="h per action dimension, env units")
    scale: list[float] | None = Field(
        description="σ̂ per action dimension the rule scaled (offsets from the target); None for a fixed bandwidth"
    )
    target_samples: int
    n: int
    effective_sample_size: float = Field(description="(Σw)²/Σw² of the kernel-smoothed weights")


def silverman_bandwidth(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h [D], σ̂ [D]) from offsets [N, D] = logged action − target mean action (Silverman's rule)."""
    u = np.asarray(offsets, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] < 2:
        raise EvaluationError(f"the bandwidth rule needs offsets [N ≥ 2, D], got shape {u.shape}")
    n, d = u.shape
    std = u.std(axis=0, ddof=1)
    q75, q25 = np.percentile(u, [75.0, 25.0], axis=0)
    iqr = (q75 - q25) / 1.349
    sigma = np.where(iqr > 0.0, np.minimum(std, iqr), std)
    if not np.all(np.isfinite(sigma) & (sigma > 0.0)):
        raise EvaluationError(
            f"logged actions do not vary around the target's actions (spread per dimension {sigma.tolist()}); "
            "the kernel bandwidth rule needs exploration in every dimension — log with exploration or set "
            "evaluation.kernel.bandwidth"
        )
    constant = (4.0 / (d + 2.0)) ** (1.0 / (d + 4.0))
    return constant * sigma * n ** (-1.0 / (d + 4.0)), sigma


def choose_bandwidth(
    logged_actions: np.ndarray, target_mean: np.ndarray, config: KernelConfig
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(h [D], σ̂ [D] or None, rule text): the configured fixed bandwidth (no σ̂), or Silverman's rule × scale."""
    a = np.asarray(logged_actions, dtype=np.float64)
    d = a.shape[1]
    if config.bandwidth is not None:
        h = np.asarray(config.bandwidth, dtype=np.float64)
        if h.shape != (d,) or not np.all(h > 0.0):
            raise EvaluationError(
                f"evaluation.kernel.bandwidth must hold {d} positive values (one per action dimension), "
                f"got {config.bandwidth}"
            )
        return h, None, "fixed (evaluation.kernel.bandwidth)"
    h, sigma = silverman_bandwidth(a - np.asarray(target_mean, dtype=np.float64))
    rule = SILVERMAN_RULE if config.bandwidth_scale == 1.0 else f"{config.bandwidth_scale} × {SILVERMAN_RULE}"
    return h * config.bandwidth_scale, sigma, rule


def kernel_weights(
    logged_actions: np.ndarray, target_samples: np.ndarray, log_propensity: np.ndarray, bandwidth: np.ndarray
) -> np.ndarray:
    """w_i = mean_m K_h(a'_mi − a_i) / μ(a_i|x_i) [N], in log space (Gaussian product kernel).

    `logged_actions` [N, D], `target_samples` [M, N, D] draws of the target (M = 1 and the mean
    for a deterministic target), `log_propensity` [N] log μ(a_i|x_i), `bandwidth` [D].
    """
    a = np.asarray(logged_actions, dtype=np.float64)
    draws = np.asarray(target_samples, dtype=np.float64)
    log_mu = np.asarray(log_propensity, dtype=np.float64)
    h = np.asarray(bandwidth, dtype=np.float64)
    n, d = a.shape
    if draws.ndim != 3 or draws.shape[1:] != (n, d):
        raise EvaluationError(
            f"target_samples must be [M, {n}, {d}] (draws, decisions, dims), got {draws.shape}"
        )
    if log_mu.shape != (n,) or h.shape != (d,):
        raise EvaluationError(
            f"log_propensity must be ({n},) and bandwidth ({d},); got {log_mu.shape}, {h.shape}"
        )
    z = (draws - a[None]) / h
    log_k = -0.5 * np.sum(z * z, axis=2) - float(np.sum(np.log(h))) - 0.5 * d * math.log(2.0 * math.pi)
    top = log_k.max(axis=0)
    log_mean_k = top + np.log(np.mean(np.exp(log_k - top), axis=0))
    with np.errstate(over="ignore"):
        return np.exp(log_mean_k - log_mu)


def describe_smoothing(
    weights: np.ndarray, bandwidth: np.ndarray, sigma: np.ndarray | None, rule: str, target_samples: int
) -> KernelSmoothing:
    return KernelSmoothing(
        rule=rule,
        bandwidth=[float(v) for v in bandwidth],
        scale=None if sigma is None else [float(v) for v in sigma],
        target_samples=target_samples,
        n=int(weights.size),
        effective_sample_size=effective_sample_size(weights),
    )
