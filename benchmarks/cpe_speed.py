"""CPE cost: the one-step estimators with bootstrap intervals over 1,000,000 logged decisions."""

from __future__ import annotations

import time

import numpy as np

from evaluation import one_step_estimates


def main(n: int = 1_000_000, actions: int = 4, resamples: int = 200) -> None:
    rng = np.random.default_rng(0)
    logging = rng.dirichlet(np.ones(actions), size=n)
    logged_action = np.array([rng.choice(actions, p=p) for p in logging[:1000]] * (n // 1000))
    propensity = logging[np.arange(n), logged_action]
    target = rng.dirichlet(np.ones(actions), size=n)
    q_hat = rng.normal(0.5, 0.1, size=(n, actions))
    reward = rng.normal(0.5, 0.3, size=n)
    started = time.perf_counter()
    estimates = one_step_estimates(
        target, q_hat, logged_action, propensity, reward, confidence=0.95, bootstrap_samples=resamples, seed=0
    )
    elapsed = time.perf_counter() - started
    print(f"   DM/IPS/SNIPS/DR over {n:,} decisions × {resamples} bootstrap resamples: {elapsed:.1f}s")
    for name, estimate in estimates.items():
        print(f"   {name:>5}: {estimate.value:.4f} [{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]")


if __name__ == "__main__":
    main()
