"""CPE cost over 1,000,000 logged decisions with 200 bootstrap resamples (target: ≤ 60 s on 2 cores).

Array level (what `evaluate_probabilities` runs after reading the timelines): the one-step
estimators (DM, IPS, SNIPS, DR, SNDR, switch-DR) on one shared bootstrap, FQE, and the
sequential ones (PDIS, sequential DR, WDR, MAGIC) over 250,000 four-step episodes.

End to end: `evaluate_policy` on one simulated day of 20,000 notification decisions (5,000 users ×
4 slots) for a registered ONNX model — scoring the timelines, reward model, FQE and every
estimator (target: ≤ 10 s). Prints the figures, then one JSON line with all of them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from apps.notifications import ACTIONS, NotificationSim, NotificationSimConfig
from apps.offline import simulate_timelines
from evaluation import (
    EvaluationConfig,
    RidgeFqeConfig,
    evaluate_policy,
    fitted_q_evaluation,
    one_step_estimates,
    sequential_estimates,
)
from features import fit_normalization, frame_from_feature_maps
from trainer import DqnConfig, EpsilonGreedyExploration, ModelRegistry, OnnxPolicy, train_and_register


def policy_evaluation_seconds(n_users: int = 5_000) -> tuple[int, float]:
    """(decisions, seconds) of `evaluate_policy` on one simulated day logged under the ε-rule, for
    a one-epoch DQN (its quality does not matter here, only the cost of evaluating it)."""
    sim = NotificationSim(NotificationSimConfig(n_users=n_users))
    timelines = simulate_timelines(sim, 0, sim.rule_send_probability, "rule")
    spec = fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist()))
    with tempfile.TemporaryDirectory() as root:
        registry = ModelRegistry(Path(root) / "registry")
        metadata = train_and_register(
            timelines,
            spec,
            list(ACTIONS),
            DqnConfig(num_epochs=1),
            registry,
            Path(root) / "tb",
            EpsilonGreedyExploration(epsilon=0.1),
        )
        policy = OnnxPolicy.load(registry, metadata.version)
        started = time.perf_counter()
        evaluate_policy(timelines, policy, EvaluationConfig(), spec)
        return len(timelines), time.perf_counter() - started


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
    one_step_s = time.perf_counter() - started
    print(f"   one-step (6 estimators) over {n:,} decisions × {resamples} resamples: {one_step_s:.1f}s")

    started = time.perf_counter()
    fqe = fitted_q_evaluation(features, episode, logged_action, reward, target, 0.9, RidgeFqeConfig())
    fqe_s = time.perf_counter() - started
    print(f"   FQE ({fqe.fit.iterations} iterations × {fqe.fit.folds} folds): {fqe_s:.1f}s")

    started = time.perf_counter()
    estimates.update(
        sequential_estimates(episode, target, fqe.q_hat, logged_action, propensity, reward, 0.9, **boot)
    )
    sequential_s = time.perf_counter() - started
    print(
        f"   sequential (PDIS, SeqDR, WDR, MAGIC) over {n // steps:,} episodes × {resamples} resamples: "
        f"{sequential_s:.1f}s"
    )
    array_total_s = time.perf_counter() - total
    print(f"   total {array_total_s:.1f}s (target ≤ 60 s)")
    for name, estimate in estimates.items():
        print(f"   {name:>14}: {estimate.value:.4f} [{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]")

    decisions, evaluate_s = policy_evaluation_seconds()
    print(f"   evaluate_policy end to end over {decisions:,} decisions: {evaluate_s:.1f}s (target ≤ 10 s)")
    print(
        json.dumps(
            {
                "benchmark": "cpe_speed",
                "decisions": n,
                "resamples": resamples,
                "one_step_s": round(one_step_s, 3),
                "fqe_s": round(fqe_s, 3),
                "sequential_s": round(sequential_s, 3),
                "array_total_s": round(array_total_s, 3),
                "array_target_s": 60.0,
                "evaluate_policy_decisions": decisions,
                "evaluate_policy_s": round(evaluate_s, 3),
                "evaluate_policy_target_s": 10.0,
            }
        )
    )


if __name__ == "__main__":
    main()
