"""Cumulative regret of the contextual bandits, online, on problems with known expected rewards.

Each learner plays T rounds in batches: choices come from its exported ONNX model, the rows are
logged as one-step timelines, and the learner is retrained from all rows after every batch.
Regret is measured on expected rewards, against the best fixed arm and against the optimum
(the best arm for each context). `python -m benchmarks bandit_regret`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from benchmarks._progress import progress_bar, write
from features import NormalizationSpec, fit_normalization
from trainer.artifact import (
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    MASK_INPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
)
from trainer.bandits import (
    BanditConfig,
    LinearThompsonConfig,
    LinUcbConfig,
    NeuralBanditConfig,
    export_bandit,
    thompson_choice,
    train_bandit,
)
from trainer.onnx_policy import PROPENSITY_FLOOR, thompson_probabilities
from trainer.policy import EpsilonGreedyExploration, action_distribution

UNIFORM = "uniform"
BEST_FIXED = "best_fixed_arm"


@dataclass(frozen=True)
class BanditProblem:
    """Contexts x ~ N(0, I_d); expected reward of arm a: x·θ_a (linear) or (x·θ_a)²/2 − 0.5 (nonlinear)."""

    theta: np.ndarray  # [A, d]
    nonlinear: bool = False
    noise_std: float = 0.5

    @classmethod
    def create(cls, n_arms: int = 5, dim: int = 5, nonlinear: bool = False, seed: int = 0) -> BanditProblem:
        theta = np.random.default_rng(seed).normal(size=(n_arms, dim)) / np.sqrt(dim)
        return cls(theta=theta, nonlinear=nonlinear)

    @property
    def actions(self) -> list[str]:
        return [f"arm{a}" for a in range(self.theta.shape[0])]

    @property
    def feature_names(self) -> list[str]:
        return [f"x{j}" for j in range(self.theta.shape[1])]

    def contexts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(size=(n, self.theta.shape[1])).astype(np.float32)

    def expected(self, contexts: np.ndarray) -> np.ndarray:
        z = np.asarray(contexts, dtype=np.float64) @ self.theta.T
        return z**2 / 2.0 - 0.5 if self.nonlinear else z

    def best_fixed_arm(self, samples: int = 200_000) -> int:
        return int(self.expected(self.contexts(np.random.default_rng(99), samples)).mean(axis=0).argmax())

    def spec(self) -> NormalizationSpec:
        """Normalization fitted on a sample of the (known, stationary) context distribution."""
        sample = self.contexts(np.random.default_rng(7), 2000)
        return fit_normalization(pd.DataFrame(sample, columns=self.feature_names))


@dataclass(frozen=True)
class RegretResult:
    learner: str
    rounds: int
    regret_vs_optimum: float
    regret_vs_best_fixed: float
    seconds: float


def run_online(
    learner: BanditConfig | str, problem: BanditProblem, rounds: int, batch: int, seed: int = 0
) -> RegretResult:
    """Play `rounds` rounds; `learner` is a bandit config, `UNIFORM` or `BEST_FIXED` (for scale)."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    spec = problem.spec()
    n_arms = len(problem.actions)
    mask = np.ones((batch, n_arms), dtype=np.float32)
    fixed = problem.best_fixed_arm()
    rows: list[dict] = []
    session: ort.InferenceSession | None = None
    regret_opt = regret_fixed = 0.0
    for start in range(0, rounds, batch):
        x = problem.contexts(rng, min(batch, rounds - start))
        n = len(x)
        chosen, propensity = _choose(learner, session, x, mask[:n], fixed, rng)
        means = problem.expected(x)
        got = means[np.arange(n), chosen]
        regret_opt += float((means.max(axis=1) - got).sum())
        regret_fixed += float((means[:, fixed] - got).sum())
        rewards = got + problem.noise_std * rng.standard_normal(n)
        rows += _timeline_rows(problem, x, chosen, propensity, rewards, start)
        if isinstance(learner, str):
            continue
        result = train_bandit(pd.DataFrame(rows), spec, problem.actions, learner)
        session = ort.InferenceSession(
            export_bandit(result.network, learner.softmax_temperature), _one_thread()
        )
    name = learner if isinstance(learner, str) else learner.type
    return RegretResult(name, rounds, regret_opt, regret_fixed, time.perf_counter() - started)


def _choose(
    learner: BanditConfig | str,
    session: ort.InferenceSession | None,
    x: np.ndarray,
    mask: np.ndarray,
    fixed: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Chosen arm indices and their logged propensities, through the exported model when there is one."""
    n, n_arms = mask.shape
    if learner == BEST_FIXED:
        return np.full(n, fixed), np.ones(n)
    if session is None:  # uniform, or a learner before its first batch of data
        return rng.integers(0, n_arms, size=n), np.full(n, 1.0 / n_arms)
    inputs = {FEATURES_INPUT: x, MASK_INPUT: mask}
    if isinstance(learner, LinearThompsonConfig):
        mean, width = session.run([REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT], inputs)
        chosen = thompson_choice(mean, width, mask, rng)
        probabilities = thompson_probabilities(mean, width, mask)  # exact, by quadrature (as served)
        return chosen, np.maximum(probabilities[np.arange(n), chosen], PROPENSITY_FLOOR)
    (q,) = session.run([Q_OUTPUT], inputs)
    exploration = EpsilonGreedyExploration(epsilon=0.05 if isinstance(learner, NeuralBanditConfig) else 0.0)
    probabilities = action_distribution(q, mask, exploration)
    chosen = (probabilities.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return chosen, probabilities[np.arange(n), chosen]


def _timeline_rows(
    problem: BanditProblem,
    x: np.ndarray,
    chosen: np.ndarray,
    propensity: np.ndarray,
    rewards: np.ndarray,
    offset: int,
) -> list[dict]:
    actions = problem.actions
    names = problem.feature_names
    return [
        {
            "mdp_id": f"r{offset + i}",
            "sequence_number": 0,
            "state_features": dict(zip(names, map(float, x[i]), strict=True)),
            "action": actions[int(chosen[i])],
            "action_probability": float(propensity[i]),
            "reward": float(rewards[i]),
            "next_state_features": {},
            "possible_actions": actions,
            "possible_next_actions": [],
            "not_terminal": False,
        }
        for i in range(len(x))
    ]


def _one_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def main(rounds: int = 10_000, batch: int = 500, *, progress: bool = True) -> None:
    learners: list[BanditConfig | str] = [
        LinUcbConfig(alpha=1.0),
        LinearThompsonConfig(posterior_scale=0.5),
        NeuralBanditConfig(num_epochs=10, hidden_sizes=[32, 32]),
        UNIFORM,
        BEST_FIXED,
    ]
    for nonlinear in (False, True):
        problem = BanditProblem.create(nonlinear=nonlinear)
        print(
            f"{'nonlinear' if nonlinear else 'linear'} bandit: {len(problem.actions)} arms, "
            f"{len(problem.feature_names)} context features, T={rounds}, retrain every {batch} rounds"
        )
        print(f"  {'learner':<16} {'regret vs optimum':>18} {'regret vs best fixed arm':>25} {'time':>8}")
        for learner in progress_bar(learners, desc="learners", enabled=progress):
            r = run_online(learner, problem, rounds, batch)
            write(
                f"  {r.learner:<16} {r.regret_vs_optimum:>18,.1f} {r.regret_vs_best_fixed:>25,.1f} "
                f"{r.seconds:>7.1f}s"
            )


if __name__ == "__main__":
    main()
