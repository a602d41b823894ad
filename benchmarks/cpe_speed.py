"""CPE cost over 1,000,000 logged decisions with 200 bootstrap resamples (target: ≤ 60 s on 2 cores).

Array level (what `evaluate_probabilities` runs after reading the timelines): the one-step
estimators (DM, IPS, SNIPS, DR, SNDR, switch-DR) on one shared bootstrap, FQE, and the
sequential ones (PDIS, sequential DR, WDR, MAGIC) over 250,000 four-step episodes.
"""

from __future__ import annotations

import time

import numpy as np

from evaluation import RidgeFqeConfig, fitted_q_evaluation, one_step_estimates, sequential_estimates


def main(n: int = 1_000_000, actions: int = 4, resamples: int = 200, steps: int = 4) -> None:
    rng = np.random.default_rng(0)
    logging = rng.dirichlet(np.ones(actions) * 3, size=n)
    logged_action = (rng.random((n, 1)) > np.cumsum(logging, axis=1)).sum(axis=1)
    propensity = logging[np.arange(n), logged_action]
    target = 0.7 * logging + 0.3 * rng.dirichlet(np.ones(actions), size=n)
    features = rng.normal(size=(n, 8))
    reward = 0.5 + 0.1 * features[:, 0] + rng.normal(0.0, 0.3, size=n)
    episode = np.arange(n) // steps
    q_hat = rng.normal(0.5, 0.1, size=(n, actions))
    boot = {"confidence": 0.95, "bootstrap_samples": resamples, "seed": 0}
    total = time.perf_counter()

    started = time.perf_counter()
    estimates = one_step_estimates(target, q_hat, logged_action, propensity, reward, **boot)
    print(
        f"   one-step (6 estimators) over {n:,} decisions × {resamples} resamples: {time.perf_counter() - started:.1f}s"
    )

    started = time.perf_counter()
    fqe = fitted_q_evaluation(features, episode, logged_action, reward, target, 0.9, RidgeFqeConfig())
    print(
        f"   FQE ({fqe.fit.iterations} iterations × {fqe.fit.folds} folds): {time.perf_counter() - started:.1f}s"
    )

    started = time.perf_counter()
    estimates.update(
        sequential_estimates(episode, target, fqe.q_hat, logged_action, propensity, reward, 0.9, **boot)
    )
    print(
        f"   sequential (PDIS, SeqDR, WDR, MAGIC) over {n // steps:,} episodes × {resamples} resamples: "
        f"{time.perf_counter() - started:.1f}s"
    )
    print(f"   total {time.perf_counter() - total:.1f}s (target ≤ 60 s)")
    for name, estimate in estimates.items():
        print(f"   {name:>14}: {estimate.value:.4f} [{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]")


if __name__ == "__main__":
    main()
