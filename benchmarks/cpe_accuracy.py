"""CPE accuracy where the truth is known: bias and RMSE of every estimator over 20 seeds.

Three tasks. Two discrete ones through `evaluate_probabilities` (reward model, FQE, every estimator):
- the notification simulator (apps/notifications.py): one day logged under the ε-rule, the truth
  of any stochastic policy is exact (`NotificationSim.policy_value`, per decision);
- CartPole-v1 (Gymnasium, 60-step horizon, γ = 0.95): logged under a noisy controller, the truth of
  the target is the mean discounted return of 20,000 rollouts.
The target is π_α = (1 − α)·logging + α·other: α small stays close to the logging policy, α = 1
is a different policy, so the tables show how each estimator's error grows with divergence.
Errors are relative to the truth (per decision for the simulator, per episode for CartPole;
one-step estimators value one decision under the logged history, so in a sequential task they
are biased by design — that is what the sequential ones are for).
The third is continuous (benchmarks/cpe_continuous.py): a Gaussian-policy contextual bandit with an
exact truth, through `evaluate_action_samples` (kernel-smoothed weights, Kallus & Zhou 2018); its
headline `kernel_dr` must reach a relative RMSE ≤ 10 %. The last line is one JSON object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pandas as pd

from apps.notifications import ACTIONS, FEATURE_NAMES, NotificationSim, NotificationSimConfig
from apps.offline import simulate_timelines
from benchmarks import cpe_continuous
from benchmarks._progress import progress_bar
from evaluation import EvaluationConfig, evaluate_probabilities
from features import fit_normalization, frame_from_feature_maps

ALPHAS = (0.1, 0.25, 0.5, 1.0)
SEQUENTIAL = ("pdis", "sequential_dr", "wdr", "magic", "fqe")
CARTPOLE_HORIZON = 60
CARTPOLE_GAMMA = 0.95
SendProbability = Callable[[np.ndarray], np.ndarray]


def _mixture(logging: SendProbability, other: SendProbability, alpha: float) -> SendProbability:
    return lambda features: (1.0 - alpha) * logging(features) + alpha * other(features)


def _notification_other(features: np.ndarray) -> np.ndarray:
    """Notify users whose past CTR is high, unless notified in the previous slot."""
    return np.where((features[:, 1] > 0.35) & (features[:, 4] < 0.5), 0.9, 0.1)


def _evaluate(frame: pd.DataFrame, target: np.ndarray, actions: list[str], config: EvaluationConfig):
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    return evaluate_probabilities(frame, target, actions, "target", config, spec)


def notification_errors(
    seeds: int, n_users: int, *, progress: bool = False
) -> dict[float, dict[str, list[float]]]:
    """Relative error (estimate − truth) / truth per α and estimator, per decision."""
    sim = NotificationSim(NotificationSimConfig(n_users=n_users))
    slots = sim.config.slots_per_day
    config = EvaluationConfig(gamma=1.0, bootstrap_samples=50, min_rows=1)
    out: dict[float, dict[str, list[float]]] = {a: {} for a in ALPHAS}
    for seed in progress_bar(range(seeds), desc="notification seeds", enabled=progress):
        frame = simulate_timelines(sim, seed, sim.rule_send_probability, "rule", seed=seed)
        frame = frame.sort_values(["mdp_id", "sequence_number_ordinal"], kind="stable").reset_index(drop=True)
        features = np.array([[s[name] for name in FEATURE_NAMES] for s in frame["state_features"]])
        day = sim.start_day(seed)
        for alpha in ALPHAS:
            policy = _mixture(sim.rule_send_probability, _notification_other, alpha)
            truth = sim.policy_value(day, policy)
            p_send = policy(features)
            target = np.stack([1.0 - p_send, p_send], axis=1)  # ACTIONS = (dont_send, send)
            report = _evaluate(frame, target, list(ACTIONS), config)
            for name, e in report.estimates.items():
                value = e.value / slots if name in SEQUENTIAL else e.value
                out[alpha].setdefault(name, []).append((value - truth) / truth)
    return out


def _cartpole_logging(obs: np.ndarray) -> np.ndarray:
    """P(push right): a noisy controller on the pole angle, 60 % random."""
    return np.where(obs[:, 2] + 0.5 * obs[:, 3] > 0.0, 0.7, 0.3)


def _cartpole_other(obs: np.ndarray) -> np.ndarray:
    """A better controller that also watches the cart."""
    return np.where(obs[:, 2] + 0.3 * obs[:, 3] + 0.05 * obs[:, 1] > 0.0, 0.95, 0.05)


def _cartpole_rollouts(policy: SendProbability, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Roll `episodes` CartPole episodes in lockstep; arrays [episodes, horizon] and an alive mask."""
    env = gym.make_vec("CartPole-v1", num_envs=episodes, vectorization_mode="vector_entry_point")
    # Not default_rng(seed): gymnasium seeds the envs' resets with that very stream, so the action
    # draws would replay the initial states' draws (at step 2, the pole angles) and the actions
    # would not follow the logged propensities — biasing every importance-weighted estimate and
    # the truth alike. A separate stream keeps them independent.
    rng = np.random.default_rng([seed, 0xAC7])
    obs, _ = env.reset(seed=seed)
    shape = (episodes, CARTPOLE_HORIZON)
    states = np.zeros((*shape, 4))
    actions = np.zeros(shape, dtype=np.int64)
    propensity = np.ones(shape)
    rewards = np.zeros(shape)
    alive = np.zeros(shape, dtype=bool)
    running = np.ones(episodes, dtype=bool)
    for t in range(CARTPOLE_HORIZON):
        p_right = policy(obs)
        action = (rng.random(episodes) < p_right).astype(np.int64)
        states[:, t], actions[:, t], alive[:, t] = obs, action, running
        propensity[:, t] = np.where(action == 1, p_right, 1.0 - p_right)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards[:, t] = reward * running
        running = running & ~(terminated | truncated)
    env.close()
    return {
        "states": states,
        "actions": actions,
        "propensity": propensity,
        "rewards": rewards,
        "alive": alive,
    }


def _cartpole_truth(policy: SendProbability, seed: int, episodes: int = 20_000) -> float:
    rolled = _cartpole_rollouts(policy, episodes, seed + 10_000)
    discount = CARTPOLE_GAMMA ** np.arange(CARTPOLE_HORIZON)
    return float(np.mean(np.sum(rolled["rewards"] * discount, axis=1)))


def _cartpole_timelines(rolled: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    episode, step = np.nonzero(rolled["alive"])  # row-major: grouped by episode, ordered by step
    names = ("cart_position", "cart_velocity", "pole_angle", "pole_velocity")
    states = rolled["states"][episode, step]
    return pd.DataFrame(
        {
            "mdp_id": [f"s{seed}-e{e:05d}" for e in episode],
            "sequence_number_ordinal": step + 1,
            "state_features": [
                {**dict(zip(names, map(float, s), strict=True)), "step": float(t)}
                for s, t in zip(states, step, strict=True)
            ],
            "action": np.where(rolled["actions"][episode, step] == 1, "right", "left"),
            "action_probability": rolled["propensity"][episode, step],
            "reward": rolled["rewards"][episode, step],
            "possible_actions": [["left", "right"]] * len(episode),
            "model_version": "noisy-controller",
        }
    )


def cartpole_errors(
    seeds: int, episodes: int, *, progress: bool = False
) -> dict[float, dict[str, list[float]]]:
    """Relative error per α and estimator of the discounted return per episode."""
    config = EvaluationConfig(gamma=CARTPOLE_GAMMA, bootstrap_samples=50, min_rows=1)
    truths = {a: _cartpole_truth(_mixture(_cartpole_logging, _cartpole_other, a), 0) for a in ALPHAS}
    out: dict[float, dict[str, list[float]]] = {a: {} for a in ALPHAS}
    for seed in progress_bar(range(seeds), desc="CartPole seeds", enabled=progress):
        rolled = _cartpole_rollouts(_cartpole_logging, episodes, seed)
        frame = _cartpole_timelines(rolled, seed)
        obs = np.array(
            [
                [s[k] for k in ("cart_position", "cart_velocity", "pole_angle", "pole_velocity")]
                for s in frame["state_features"]
            ]
        )
        for alpha in ALPHAS:
            p_right = _mixture(_cartpole_logging, _cartpole_other, alpha)(obs)
            target = np.stack([1.0 - p_right, p_right], axis=1)
            report = _evaluate(frame, target, ["left", "right"], config)
            for name in SEQUENTIAL:
                value = report.estimates[name].value
                out[alpha].setdefault(name, []).append((value - truths[alpha]) / truths[alpha])
    return out


def _print_table(title: str, errors: dict[float, dict[str, list[float]]]) -> None:
    print(f"   {title}: relative bias / relative RMSE per estimator (columns: α = divergence from logging)")
    names = list(next(iter(errors.values())))
    print("   " + f"{'estimator':>14}" + "".join(f"{f'α={a}':>18}" for a in errors))
    for name in names:
        cells = []
        for alpha in errors:
            e = np.asarray(errors[alpha][name])
            cells.append(f"{np.mean(e):+7.1%} /{np.sqrt(np.mean(e**2)):6.1%}")
        print("   " + f"{name:>14}" + "".join(f"{c:>18}" for c in cells))


def _print_continuous(seeds: int, n: int) -> dict[str, float]:
    """The continuous table (relative bias / RMSE per estimator and reward); returns the JSON figures."""
    started = time.perf_counter()
    results = {name: cpe_continuous.continuous_errors(seeds, n, name) for name in cpe_continuous.REWARDS}
    print(
        f"   continuous actions (Gaussian-policy bandit, 1-D action), {n} decisions × {seeds} seeds "
        f"({time.perf_counter() - started:.0f}s)"
    )
    print("   relative bias / relative RMSE per estimator (columns: reward; truth exact)")
    print("   " + f"{'estimator':>14}" + "".join(f"{name:>18}" for name in results))
    for estimator in cpe_continuous.ESTIMATORS:
        cells = []
        for errors, _ in results.values():
            e = np.asarray(errors[estimator])
            cells.append(f"{np.mean(e):+7.1%} /{np.sqrt(np.mean(e**2)):6.1%}")
        print("   " + f"{estimator:>14}" + "".join(f"{c:>18}" for c in cells))
    figures: dict[str, float] = {}
    for name, (errors, info) in results.items():
        rmse = cpe_continuous.relative_rmse(errors[cpe_continuous.HEADLINE])
        verdict = "meets" if rmse <= 0.10 else "MISSES"
        print(
            f"   continuous {name}: truth {info['truth']:.4f}, bandwidth h = {info['bandwidth']:.3f} "
            f"(Silverman), kernel-weight ESS {info['ess']:.0f} of {n}; {cpe_continuous.HEADLINE} relative "
            f"RMSE {rmse:.1%} — {verdict} the ≤ 10 % target"
        )
        figures[f"continuous_{name}_kernel_dr_relative_rmse"] = round(rmse, 4)
        figures[f"continuous_{name}_kernel_ips_relative_rmse"] = round(
            cpe_continuous.relative_rmse(errors["kernel_ips"]), 4
        )
    return figures


def main(
    seeds: int = 20,
    n_users: int = 2000,
    cartpole_episodes: int = 1000,
    continuous_decisions: int = 2000,
    *,
    progress: bool = True,
) -> None:
    started = time.perf_counter()
    notification = notification_errors(seeds, n_users, progress=progress)
    print(
        f"   notification simulator, {n_users} users × 4 slots, {seeds} seeds ({time.perf_counter() - started:.0f}s)"
    )
    _print_table("notifications (truth: exact policy value per decision)", notification)
    started = time.perf_counter()
    cartpole = cartpole_errors(seeds, cartpole_episodes, progress=progress)
    print(
        f"   CartPole, {cartpole_episodes} logged episodes, {seeds} seeds ({time.perf_counter() - started:.0f}s)"
    )
    _print_table("CartPole (truth: 20,000 target rollouts, discounted return)", cartpole)
    figures: dict[str, float] = {}
    for task, errors in (("notifications", notification), ("CartPole", cartpole)):
        for name in ("sequential_dr", "magic"):
            rmse = float(np.sqrt(np.mean(np.asarray(errors[ALPHAS[0]][name]) ** 2)))
            verdict = "meets" if rmse <= 0.10 else "MISSES"
            print(
                f"   {task} {name} at α={ALPHAS[0]}: relative RMSE {rmse:.1%} — {verdict} the ≤ 10 % target"
            )
            figures[f"{task.lower()}_{name}_relative_rmse_alpha_{ALPHAS[0]}"] = round(rmse, 4)
    figures.update(_print_continuous(seeds, continuous_decisions))
    figures["continuous_target_relative_rmse"] = 0.10
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
