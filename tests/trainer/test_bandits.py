"""Contextual bandits (LinUCB, linear Thompson, neural) learn from logged one-step timelines, export
faithful ONNX, and LinUCB's online regret is far below a uniform policy's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from benchmarks.bandit_regret import UNIFORM, BanditProblem, _timeline_rows, run_online
from trainer.artifact import (
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    MASK_INPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
)
from trainer.bandits import (
    LinearThompsonConfig,
    LinUcbConfig,
    NeuralBandit,
    NeuralBanditConfig,
    _row_weights,
    export_bandit,
    thompson_choice,
    train_bandit,
)
from trainer.data import build_transitions
from trainer.errors import TrainingDataError


def _logged(problem: BanditProblem, n: int, seed: int) -> pd.DataFrame:
    """Rows logged by a uniform policy (propensity 1/A)."""
    rng = np.random.default_rng(seed)
    x = problem.contexts(rng, n)
    chosen = rng.integers(0, len(problem.actions), size=n)
    rewards = problem.expected(x)[np.arange(n), chosen] + problem.noise_std * rng.standard_normal(n)
    return pd.DataFrame(_timeline_rows(problem, x, chosen, np.full(n, 1 / len(problem.actions)), rewards, 0))


def _held_out_accuracy(problem: BanditProblem, onnx_bytes: bytes, output: str = Q_OUTPUT) -> float:
    x = problem.contexts(np.random.default_rng(1234), 1000)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    mask = np.ones((len(x), len(problem.actions)), dtype=np.float32)
    (scores,) = session.run([output], {FEATURES_INPUT: x, MASK_INPUT: mask})
    return float((scores.argmax(axis=1) == problem.expected(x).argmax(axis=1)).mean())


@pytest.mark.parametrize(
    "config", [LinUcbConfig(alpha=0.5), LinearThompsonConfig(), LinUcbConfig(propensity_weighting=True)]
)
def test_linear_bandits_learn_a_linear_bandit(config):
    problem = BanditProblem.create(nonlinear=False)
    result = train_bandit(_logged(problem, 3000, seed=0), problem.spec(), problem.actions, config)
    onnx_bytes = export_bandit(result.network, config.softmax_temperature)
    assert _held_out_accuracy(problem, onnx_bytes, REWARD_MEAN_OUTPUT) >= 0.9
    assert _held_out_accuracy(problem, onnx_bytes) >= 0.85  # LinUCB's q includes the (small) bonus


def test_ucb_bonus_shrinks_with_data_and_q_is_mean_plus_bonus():
    problem = BanditProblem.create()
    spec = problem.spec()
    x = problem.contexts(np.random.default_rng(5), 200)
    mask = np.ones((len(x), len(problem.actions)), dtype=np.float32)
    widths = []
    for n in (100, 1000, 5000):
        result = train_bandit(_logged(problem, n, seed=n), spec, problem.actions, LinUcbConfig(alpha=1.0))
        session = ort.InferenceSession(export_bandit(result.network, 1.0), providers=["CPUExecutionProvider"])
        q, mean, width = session.run(
            [Q_OUTPUT, REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT], {FEATURES_INPUT: x, MASK_INPUT: mask}
        )
        np.testing.assert_allclose(q, mean + width, atol=1e-5)
        widths.append(float(width.mean()))
    assert widths[0] > 2 * widths[1] > 4 * widths[2], widths


def _draw_frequencies(mean, width, mask, rng, n_draws):
    counts = np.bincount(
        [int(thompson_choice(mean, width, mask, rng)[0]) for _ in range(n_draws)], minlength=mean.shape[1]
    )
    return counts / n_draws


def test_thompson_draws_explore_in_proportion_to_uncertainty():
    mean = np.array([[1.0, 0.9, -5.0]])
    mask = np.ones_like(mean)
    rng = np.random.default_rng(0)
    certain = _draw_frequencies(mean, np.full_like(mean, 1e-3), mask, rng, n_draws=500)
    unsure = _draw_frequencies(mean, np.full_like(mean, 1.0), mask, rng, n_draws=2000)
    assert certain[0] == 1.0
    # Two N(·, 1) arms 0.1 apart (the third is 6 σ below): P(arm 1 wins) = Φ(−0.1/√2) = 0.4718.
    assert 0.42 < unsure[1] < 0.53 and unsure[2] < 0.01
    assert thompson_choice(mean, np.ones_like(mean), np.array([[0.0, 0.0, 1.0]]), rng)[0] == 2


def test_neural_bandit_learns_a_nonlinear_bandit_that_linucb_cannot():
    problem = BanditProblem.create(nonlinear=True)
    logged = _logged(problem, 4000, seed=2)
    spec = problem.spec()
    neural = train_bandit(
        logged, spec, problem.actions, NeuralBanditConfig(num_epochs=20, hidden_sizes=[32, 32])
    )
    linear = train_bandit(logged, spec, problem.actions, LinUcbConfig(alpha=0.0))
    neural_accuracy = _held_out_accuracy(problem, export_bandit(neural.network, 1.0))
    linear_accuracy = _held_out_accuracy(problem, export_bandit(linear.network, 1.0))
    assert neural_accuracy >= 0.7 and neural_accuracy > linear_accuracy + 0.2, (
        neural_accuracy,
        linear_accuracy,
    )


def test_linucb_online_regret_is_far_below_uniform():
    problem = BanditProblem.create()
    linucb = run_online(LinUcbConfig(alpha=0.5), problem, rounds=2000, batch=200)
    uniform = run_online(UNIFORM, problem, rounds=2000, batch=200)
    assert linucb.regret_vs_optimum < 0.3 * uniform.regret_vs_optimum, (linucb, uniform)
    # Every arm's mean over contexts is 0 here, so beating the best fixed arm means using the context.
    assert linucb.regret_vs_best_fixed < -0.5 * uniform.regret_vs_optimum


def test_multi_step_timelines_are_refused():
    problem = BanditProblem.create()
    logged = _logged(problem, 50, seed=3)
    logged.loc[4, "not_terminal"] = True
    logged.at[4, "possible_next_actions"] = problem.actions
    with pytest.raises(TrainingDataError, match="one-step MDPs"):
        train_bandit(logged, problem.spec(), problem.actions, LinUcbConfig())


def test_bandit_registers_through_the_training_workflow(tmp_path):
    from trainer.onnx_policy import OnnxPolicy
    from trainer.policy import GreedyExploration
    from trainer.registry import ModelRegistry
    from trainer.workflow import train_and_register

    problem = BanditProblem.create()
    registry = ModelRegistry(tmp_path / "registry")
    metadata = train_and_register(
        _logged(problem, 2000, seed=4),
        problem.spec(),
        problem.actions,
        LinUcbConfig(alpha=0.1),
        registry,
        tmp_path / "tb",
        GreedyExploration(),
    )
    assert metadata.algorithm == "linucb"
    policy = OnnxPolicy.load(registry, metadata.version)
    x = problem.contexts(np.random.default_rng(8), 500)
    q = policy.q_values(x, np.ones((len(x), len(problem.actions)), dtype=np.float32))
    assert (q.argmax(axis=1) == problem.expected(x).argmax(axis=1)).mean() >= 0.85


def test_neural_bandit_normalizing_once_trains_the_weights_normalizing_every_batch_trains():
    """Training normalizes every logged row once; the old path ran the network's normalization on
    each minibatch. Same seeds, data and minibatch order: the same weights, bitwise."""
    problem = BanditProblem.create(nonlinear=True)
    logged = _logged(problem, 600, seed=3)
    spec = problem.spec()
    config = NeuralBanditConfig(num_epochs=3, hidden_sizes=[16], batch_size=64)

    trained = train_bandit(logged, spec, problem.actions, config).network

    data = build_transitions(logged, list(spec.feature_names), problem.actions, gamma=0.0)
    w = torch.as_tensor(_row_weights(logged, config), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        reference = NeuralBandit(spec, len(problem.actions), config.hidden_sizes)
    optimizer = torch.optim.Adam(
        reference.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(config.num_epochs):
        for rows in torch.randperm(len(data.rewards), generator=shuffle).split(config.batch_size):
            q = reference.q_all(data.states[rows]).gather(1, data.actions[rows, None]).squeeze(1)
            loss = (w[rows] * (q - data.rewards[rows]) ** 2).sum() * (1 / w[rows].sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    for name, tensor in reference.state_dict().items():
        assert torch.equal(trained.state_dict()[name], tensor), name
