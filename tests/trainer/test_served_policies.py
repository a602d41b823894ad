"""Served policies per action kind: what `decide` / `act` sample is what `probabilities` /
`log_density` report, checked against independent numpy/scipy references on real exported graphs."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import ndtr

from contracts import ActionKind
from features import NormalizationModule, NormalizationSpec, fit_normalization
from trainer import (
    POLICY_TYPES,
    ContinuousPolicy,
    DiscretePolicy,
    ModelRegistry,
    OnnxPolicy,
    ParametricPolicy,
    PolicyInputError,
    PolicyOutputError,
    SacConfig,
    Td3Config,
    load_policy,
    load_registered_policy,
)
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    CANDIDATE_MASK_INPUT,
    CONTINUOUS_OUTPUTS,
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    PROBS_OUTPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
    SCORES_OUTPUT,
    ModelMetadata,
)
from trainer.bandits import LinearBandit, export_bandit, thompson_choice
from trainer.continuous_export import export_continuous_policy
from trainer.dqn import QNetwork
from trainer.errors import SignatureMismatchError
from trainer.export import export_model
from trainer.parametric_dqn import ParametricQNetwork, export_parametric_model
from trainer.policies._common import sample_categorical
from trainer.policies.discrete import SERVED_DISTRIBUTIONS
from trainer.policies.thompson import thompson_probabilities
from trainer.policy import EpsilonGreedyExploration, GreedyExploration, SoftmaxExploration
from trainer.sac import GaussianActor
from trainer.signatures import check_signature, required_outputs
from trainer.td3 import DeterministicActor

ACTIONS = ["a", "b", "c"]
LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 10.0])


def _spec(names: list[str], seed: int) -> NormalizationSpec:
    rng = np.random.default_rng(seed)
    return fit_normalization(pd.DataFrame({n: rng.normal(0.0, 2.0, 500) for n in names}))


def _write(tmp_path: Path, onnx_bytes: bytes, **fields) -> tuple[Path, ModelMetadata]:
    path = tmp_path / f"{fields['algorithm']}-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}.onnx"
    path.write_bytes(onnx_bytes)
    metadata = ModelMetadata(
        version=f"m0001-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}",
        created_at=datetime.now(UTC),
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        **fields,
    )
    return path, metadata


def _chisquare_pvalue(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """Pearson's test of observed counts against a distribution (renormalized: float32 inputs)."""
    probabilities = np.asarray(probabilities, np.float64)
    return float(stats.chisquare(counts, probabilities / probabilities.sum() * counts.sum()).pvalue)


# --- Thompson propensities ------------------------------------------------------------------


def test_two_arm_thompson_propensities_match_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    width = np.exp(rng.uniform(np.log(1e-3), np.log(1e2), (n, 2)))
    mean = rng.uniform(-4, 4, (n, 2)) * width.max(axis=1, keepdims=True) * rng.uniform(0, 1, (n, 1))
    probabilities = thompson_probabilities(mean, width, np.ones((n, 2)))
    closed_form = ndtr((mean[:, 0] - mean[:, 1]) / np.hypot(width[:, 0], width[:, 1]))
    assert np.max(np.abs(probabilities[:, 0] - closed_form)) < 1e-5
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    # A deterministic arm (width 0) against a random one: P(random wins) = 1 − Φ((c − m)/s).
    one_fixed = thompson_probabilities(np.array([[0.3, 1.0]]), np.array([[0.5, 0.0]]), np.ones((1, 2)))
    assert abs(one_fixed[0, 0] - (1.0 - ndtr((1.0 - 0.3) / 0.5))) < 1e-6


CASES = {  # mean, width, possible
    "four random arms": ([0.0, 0.1, 0.2, -0.5], [1.0, 0.5, 0.05, 2.0], [1, 1, 1, 1]),
    "tied deterministic arms": ([0.0, 0.2, 0.2, 0.2, 0.1], [1.0, 0.0, 0.0, 0.3, 0.01], [1, 1, 1, 1, 1]),
    "masked arms and wide ratios": ([1.0, 0.2, 5.0, 0.2, 0.9], [1.0, 1e-3, 3.0, 0.0, 30.0], [1, 1, 0, 1, 1]),
    "all deterministic": ([0.0, 0.3, 0.3], [0.0, 0.0, 0.0], [1, 1, 1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_thompson_propensities_match_a_million_draws(case: str) -> None:
    mean, width, possible = (np.array([v], dtype=np.float64) for v in CASES[case])
    probabilities = thompson_probabilities(mean, width, possible)[0]
    draws = 1_000_000
    chosen = thompson_choice(
        np.repeat(mean, draws, 0),
        np.repeat(width, draws, 0),
        np.repeat(possible, draws, 0),
        np.random.default_rng(1),
    )
    frequencies = np.bincount(chosen, minlength=mean.shape[1]) / draws
    standard_error = np.sqrt(np.maximum(probabilities * (1 - probabilities), 1e-12) / draws)
    assert np.all(np.abs(frequencies - probabilities) <= 5 * standard_error + 1e-6), (
        probabilities,
        frequencies,
    )
    assert probabilities[possible[0] == 0].sum() == 0.0
    assert abs(probabilities.sum() - 1.0) < 1e-12


def test_thompson_rows_without_finite_outputs_have_no_distribution() -> None:
    probabilities = thompson_probabilities(
        np.array([[0.0, np.nan], [0.0, np.nan]]), np.ones((2, 2)), np.array([[1, 1], [1, 0]])
    )
    assert np.isnan(probabilities[0]).all()
    np.testing.assert_allclose(probabilities[1], [1.0, 0.0])


# --- discrete: Thompson and LinUCB bandits, ordinary Q models --------------------------------


def _linear_bandit(seed: int, bonus_weight: float, scale: float) -> tuple[LinearBandit, NormalizationSpec]:
    spec = _spec(["x0", "x1"], seed)
    rng = np.random.default_rng(seed)
    d = int(spec.output_dim) + 1
    means = rng.normal(0.0, 0.3, (len(ACTIONS), d))
    roots = rng.normal(0.0, 0.4, (len(ACTIONS), d, d))
    a_inv = roots @ roots.transpose(0, 2, 1) + 0.05 * np.eye(d)
    return LinearBandit(spec, means, a_inv, scale=scale, bonus_weight=bonus_weight), spec


@pytest.fixture(scope="module")
def thompson(tmp_path_factory) -> tuple[DiscretePolicy, LinearBandit]:
    network, spec = _linear_bandit(3, bonus_weight=0.0, scale=0.5)
    path, metadata = _write(
        tmp_path_factory.mktemp("thompson"),
        export_bandit(network, 1.0),
        algorithm="linear_thompson",
        feature_names=list(spec.feature_names),
        actions=ACTIONS,
        output_names=[Q_OUTPUT, PROBS_OUTPUT, REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT],
        exploration=EpsilonGreedyExploration(epsilon=0.3),  # not used: the posterior is the exploration
    )
    policy = load_policy(path, metadata)
    assert isinstance(policy, DiscretePolicy)
    return policy, network


def test_thompson_policy_serves_the_exact_propensities_of_its_posterior(thompson) -> None:
    policy, network = thompson
    features = policy.features([{"x0": 0.4, "x1": -1.0}, {"x0": None}, {"x1": 2.0}])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1]], np.float32)
    with torch.no_grad():
        mean, width = (
            t.numpy().astype(np.float64) for t in network.mean_and_width(torch.as_tensor(features))
        )
    probabilities = policy.probabilities(features, mask)
    # Row 2 has two possible arms: the closed form applies.
    assert (
        abs(probabilities[2, 0] - ndtr((mean[2, 0] - mean[2, 2]) / np.hypot(width[2, 0], width[2, 2]))) < 1e-5
    )
    assert probabilities[2, 1] == 0.0
    np.testing.assert_allclose(probabilities, thompson_probabilities(mean, width, mask), atol=1e-5)
    assert not np.allclose(probabilities.max(axis=1), 1.0)  # not greedy on the posterior mean


def test_thompson_decisions_follow_the_probabilities_they_log(thompson) -> None:
    policy, _ = thompson
    n = 20_000
    features = np.repeat(policy.features([{"x0": 0.4, "x1": -1.0}]), n, axis=0)
    mask = np.ones((n, len(ACTIONS)), np.float32)
    chosen, propensity = policy.decide(features, mask, np.random.default_rng(7))
    expected = policy.probabilities(features[:1], mask[:1])[0]
    counts = np.bincount(chosen, minlength=len(ACTIONS))
    assert _chisquare_pvalue(counts, expected) > 1e-3, (counts / n, expected)
    np.testing.assert_allclose(propensity, expected[chosen], rtol=1e-12)
    assert (propensity > 0).all()


def test_linucb_is_greedy_on_the_upper_confidence_bound(tmp_path) -> None:
    network, spec = _linear_bandit(5, bonus_weight=1.0, scale=0.8)
    path, metadata = _write(
        tmp_path,
        export_bandit(network, 1.0),
        algorithm="linucb",
        feature_names=list(spec.feature_names),
        actions=ACTIONS,
        output_names=[Q_OUTPUT, PROBS_OUTPUT, REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT],
        exploration=GreedyExploration(),
    )
    policy = load_policy(path, metadata)
    rng = np.random.default_rng(2)
    features = rng.normal(0.0, 2.0, (200, 2)).astype(np.float32)
    features[rng.random(features.shape) < 0.2] = np.nan
    mask = np.ones((200, 3), np.float32)
    # UCB from the posterior by hand: x = [normalized | 1], mean xᵀμ_a, bonus α·sqrt(xᵀA_a⁻¹x).
    with torch.no_grad():
        z = NormalizationModule(spec)(torch.as_tensor(features)).numpy().astype(np.float64)
    x = np.concatenate([z, np.ones((200, 1))], axis=1)
    means, a_inv = network.means.numpy().astype(np.float64), network.a_inv.numpy().astype(np.float64)
    ucb = x @ means.T + 0.8 * np.sqrt(np.einsum("bd,ade,be->ba", x, a_inv, x))
    probabilities = policy.probabilities(features, mask)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), ucb.argmax(axis=1))
    assert set(np.unique(probabilities)) == {0.0, 1.0}
    chosen, propensity = policy.decide(features, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, ucb.argmax(axis=1))
    assert (propensity == 1.0).all()


def test_ordinary_discrete_models_sample_their_exploration_distribution(tmp_path) -> None:
    spec = _spec(["x0", "x1"], 9)
    torch.manual_seed(0)
    network = QNetwork(spec, len(ACTIONS), [8], dueling=False)
    path, metadata = _write(
        tmp_path,
        export_model(network, 1.0),
        algorithm="dqn",
        feature_names=list(spec.feature_names),
        actions=ACTIONS,
        exploration=SoftmaxExploration(temperature=0.05, epsilon=0.2),
    )
    policy = load_policy(path, metadata)
    assert OnnxPolicy is DiscretePolicy and type(policy) is DiscretePolicy
    n = 20_000
    features = np.repeat(policy.features([{"x0": 1.0}]), n, axis=0)
    mask = np.repeat(np.array([[1, 1, 0]], np.float32), n, axis=0)
    q = policy.q_values(features[:1], mask[:1])[0].astype(np.float64)
    e = np.exp((q[:2] - q[:2].max()) / 0.05)
    expected = np.array([*(0.8 * e / e.sum() + 0.2 / 2), 0.0])
    np.testing.assert_allclose(policy.probabilities(features[:1], mask[:1])[0], expected, atol=1e-6)
    chosen, propensity = policy.decide(features, mask, np.random.default_rng(3))
    counts = np.bincount(chosen, minlength=3)
    assert counts[2] == 0
    assert _chisquare_pvalue(counts[:2], expected[:2]) > 1e-3
    np.testing.assert_allclose(propensity, expected[chosen], atol=1e-6)
    policy.probe()


# --- parametric -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parametric(tmp_path_factory) -> tuple[ParametricPolicy, ParametricQNetwork]:
    state_spec, action_spec = _spec(["u0", "u1"], 11), _spec(["price", "x0", "x1"], 12)
    torch.manual_seed(1)
    network = ParametricQNetwork(state_spec, action_spec, [16])
    with torch.no_grad():
        for parameter in network.body.parameters():
            parameter.mul_(3.0)  # spread the scores so the softmax is far from uniform
    path, metadata = _write(
        tmp_path_factory.mktemp("parametric"),
        export_parametric_model(network),
        algorithm="parametric_dqn",
        feature_names=list(state_spec.feature_names),
        actions=[],
        action_feature_names=list(action_spec.feature_names),
        input_names=[FEATURES_INPUT, ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT],
        output_names=[SCORES_OUTPUT],
        exploration=SoftmaxExploration(temperature=0.5, epsilon=0.1),
    )
    assert metadata.action_kind is ActionKind.PARAMETRIC
    policy = load_policy(path, metadata)
    assert isinstance(policy, ParametricPolicy)
    return policy, network


def test_parametric_candidates_are_padded_in_action_feature_order(parametric) -> None:
    policy, _ = parametric
    candidates, mask = policy.candidates(
        [[{"x0": 1.0, "x1": 2.0, "price": 3.0}], [{"x1": 5.0}, {"price": None}]]
    )
    nan = np.nan
    np.testing.assert_array_equal(
        candidates, np.array([[[3, 1, 2], [nan, nan, nan]], [[nan, nan, 5], [nan, nan, nan]]], np.float32)
    )
    np.testing.assert_array_equal(mask, [[1, 0], [1, 1]])
    with pytest.raises(PolicyInputError, match="row 1 has no candidates"):
        policy.candidates([[{"x0": 1.0}], []])
    with pytest.raises(PolicyInputError, match=r"row 0: candidates \[1\] are not feature maps"):
        policy.candidates([[{"x0": 1.0}, 4.0]])


def test_parametric_probabilities_follow_the_exploration_rule(parametric) -> None:
    policy, network = parametric
    rng = np.random.default_rng(4)
    users = [{"u0": float(rng.normal()), "u1": float(rng.normal())} for _ in range(50)]
    offers = [
        [
            {"x0": float(rng.normal()), "x1": float(rng.normal()), "price": float(rng.uniform(1, 9))}
            for _ in range(k)
        ]
        for k in rng.integers(1, 6, size=50)
    ]
    features = policy.features(users)
    candidates, mask = policy.candidates(offers)
    with torch.no_grad():  # scores from PyTorch, not from the graph under test
        q = network(torch.as_tensor(features), torch.as_tensor(candidates), torch.as_tensor(mask)).numpy()
    expected = np.zeros(mask.shape)
    for row, k in enumerate(mask.sum(axis=1).astype(int)):
        e = np.exp((q[row, :k] - q[row, :k].max()) / 0.5)
        expected[row, :k] = 0.9 * e / e.sum() + 0.1 / k
    np.testing.assert_allclose(policy.probabilities(features, candidates, mask), expected, atol=1e-5)
    # One row repeated: decisions follow the distribution they log.
    n = 20_000
    row = int(np.argmax(mask.sum(axis=1)))
    repeat = (np.repeat(a[row : row + 1], n, axis=0) for a in (features, candidates, mask))
    chosen, propensity = policy.decide(*repeat, np.random.default_rng(5))
    k = int(mask[row].sum())
    counts = np.bincount(chosen, minlength=mask.shape[1])
    assert counts[k:].sum() == 0
    assert _chisquare_pvalue(counts[:k], expected[row, :k]) > 1e-3
    np.testing.assert_allclose(propensity, expected[row, chosen], atol=1e-5)


def test_parametric_inputs_that_do_not_fit_are_refused(parametric) -> None:
    policy, _ = parametric
    features = np.zeros((2, 2), np.float32)
    with pytest.raises(PolicyInputError, match=r"action_features have shape \(2, 3, 2\)"):
        policy.scores(features, np.zeros((2, 3, 2), np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(PolicyInputError, match=r"rows \[1\] of candidate_mask have no candidate"):
        policy.scores(features, np.zeros((2, 3, 3), np.float32), np.array([[1, 0, 0], [0, 0, 0]], np.float32))
    policy.probe()


# --- continuous -------------------------------------------------------------------------------


def _actor(kind: str, scale: float = 1.0):
    spec = _spec(["x"], 21)
    torch.manual_seed(2)
    if kind == "sac":
        config = SacConfig(action_low=LOW.tolist(), action_high=HIGH.tolist(), hidden_sizes=[8])
        actor = GaussianActor(spec, config)
    else:
        config = Td3Config(
            action_low=LOW.tolist(), action_high=HIGH.tolist(), hidden_sizes=[8], exploration_noise_std=0.3
        )
        actor = DeterministicActor(spec, config)
    with torch.no_grad():
        for parameter in actor.body.parameters():
            parameter.mul_(scale)
    return actor.eval(), spec, config


def _continuous_policy(
    tmp_path: Path, kind: str, scale: float = 1.0, **bounds
) -> tuple[ContinuousPolicy, object]:
    actor, spec, config = _actor(kind, scale)
    path, metadata = _write(
        tmp_path,
        export_continuous_policy(actor),
        algorithm=kind,
        algorithm_config={**config.model_dump(mode="json"), **bounds},
        feature_names=list(spec.feature_names),
        actions=["steer", "throttle"],
        input_names=[FEATURES_INPUT],
        output_names=list(CONTINUOUS_OUTPUTS),
    )
    policy = load_policy(path, metadata)
    assert isinstance(policy, ContinuousPolicy)
    return policy, actor


def _reference_log_density(actions: np.ndarray, loc: np.ndarray, std: np.ndarray) -> np.ndarray:
    """scipy: x = atanh(u), u = 2(a − low)/(high − low) − 1; log N(x) − log(1 − u²) − log((high − low)/2)."""
    half = (HIGH - LOW) / 2
    u = (actions - LOW) / half - 1.0
    return (stats.norm.logpdf(np.arctanh(u), loc, std) - np.log(1 - u**2) - np.log(half)).sum(axis=1)


@pytest.mark.parametrize("kind", ["sac", "td3"])
def test_continuous_log_density_is_the_squashed_gaussian_of_the_graph(tmp_path, kind: str) -> None:
    policy, actor = _continuous_policy(tmp_path, kind)
    rng = np.random.default_rng(6)
    features = rng.normal(0.0, 2.0, (300, 1)).astype(np.float32)
    with torch.no_grad():
        _, loc, log_std = (t.numpy().astype(np.float64) for t in actor(torch.as_tensor(features)))
    if kind == "td3":  # TD3 serves its exploration noise: constant σ before the squash
        np.testing.assert_allclose(np.exp(log_std), 0.3, rtol=1e-6)
    actions = LOW + (HIGH - LOW) * rng.uniform(0.001, 0.999, (300, 2))
    np.testing.assert_allclose(
        policy.log_density(features, actions),
        _reference_log_density(actions, loc, np.exp(log_std)),
        atol=1e-3,
    )
    on_bound = actions.copy()
    on_bound[0, 0], on_bound[1, 1], on_bound[2, 1] = LOW[0], HIGH[1], HIGH[1] + 1.0
    density = policy.log_density(features, on_bound)
    assert np.isneginf(density[:3]).all() and np.isfinite(density[3:]).all()
    with pytest.raises(PolicyInputError, match=r"expects \[300, 2\]"):
        policy.log_density(features, actions[:, :1])


def test_continuous_samples_follow_the_density_they_log(tmp_path) -> None:
    policy, actor = _continuous_policy(tmp_path, "sac")
    n = 40_000
    features = np.repeat(np.array([[0.7]], np.float32), n, axis=0)
    actions, log_density, mean = policy.act(features, np.random.default_rng(8))
    assert actions.shape == mean.shape == (n, 2) and log_density.shape == (n,)
    assert ((actions > LOW) & (actions < HIGH)).all()
    np.testing.assert_allclose(log_density, policy.log_density(features, actions), rtol=1e-12)
    with torch.no_grad():
        _, loc, log_std = (t.numpy()[0].astype(np.float64) for t in actor(torch.as_tensor(features[:1])))
    std = np.exp(log_std)
    half = (HIGH - LOW) / 2
    # `mean` is tanh(loc) mapped: the distribution's median.
    np.testing.assert_allclose(mean[0], LOW + (np.tanh(loc) + 1) * half, atol=1e-5)
    assert (np.abs(np.median(actions, axis=0) - mean[0]) < 0.01 * (HIGH - LOW)).all()
    # Expectation by Gauss–Hermite quadrature of tanh(N(loc, σ²)), compared with the sample mean.
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    expected = LOW + half * (
        1 + (weights[:, None] * np.tanh(loc + std * nodes[:, None])).sum(axis=0) / weights.sum()
    )
    sample_se = actions.std(axis=0) / math.sqrt(n)
    assert (np.abs(actions.mean(axis=0) - expected) < 5 * sample_se).all()
    # Whole distribution: the squashed Gaussian's CDF, per dimension (Kolmogorov–Smirnov).
    for d in range(2):
        u = (actions[:, d] - LOW[d]) / half[d] - 1.0
        assert stats.kstest(np.arctanh(u), stats.norm(loc[d], std[d]).cdf).pvalue > 1e-3


def test_wide_policies_keep_samples_inside_with_finite_density(tmp_path) -> None:
    policy, _ = _continuous_policy(tmp_path, "sac", scale=25.0)  # saturated log std (σ up to e²) and locs
    features = np.random.default_rng(9).normal(0.0, 3.0, (5000, 1)).astype(np.float32)
    _, _, log_std = policy.distribution(features)
    assert log_std.max() > 1.5
    actions, log_density, _ = policy.act(features, np.random.default_rng(10))
    assert ((actions > LOW) & (actions < HIGH)).all()
    assert np.isfinite(log_density).all()
    assert (np.minimum(actions - LOW, HIGH - actions) < 1e-6).any()  # the tails were exercised


def test_continuous_probe_refuses_metadata_bounds_the_graph_does_not_respect(tmp_path) -> None:
    policy, _ = _continuous_policy(tmp_path, "td3")
    policy.probe()
    shifted, _ = _continuous_policy(tmp_path, "td3", action_low=[-2.0, 20.0], action_high=[2.0, 30.0])
    with pytest.raises(ValueError, match="outside"):
        shifted.probe()
    with pytest.raises(
        SignatureMismatchError,
        match=r"\(kind continuous\) metadata algorithm_config.action_low is \[-1.0\]; expected 2 finite "
        r"number\(s\), one per action dimension \['steer', 'throttle'\]",
    ):
        _continuous_policy(tmp_path, "td3", action_low=[-1.0], action_high=[1.0])


# --- the table and the signature checks -------------------------------------------------------


def test_the_table_has_one_class_per_kind_and_refuses_mismatched_graphs(tmp_path, parametric) -> None:
    assert {kind: cls.kind for kind, cls in POLICY_TYPES.items()} == {kind: kind for kind in ActionKind}
    policy, _ = parametric
    with pytest.raises(SignatureMismatchError, match="action_kind 'parametric'") as error:
        DiscretePolicy(policy.path, policy.metadata)
    assert error.value.expected == "discrete" and error.value.action_kind is ActionKind.PARAMETRIC
    # A DQN graph registered as linear Thompson lacks the posterior outputs Thompson draws from:
    # the policy refuses it at load with the error and the message deploy gives (one table).
    spec = _spec(["x0", "x1"], 9)
    path, metadata = _write(
        tmp_path,
        export_model(QNetwork(spec, len(ACTIONS), [4], dueling=False), 1.0),
        algorithm="linear_thompson",
        feature_names=list(spec.feature_names),
        actions=ACTIONS,
    )
    with pytest.raises(SignatureMismatchError) as at_load:
        load_policy(path, metadata)
    assert str(at_load.value) == (
        f"model {metadata.version} (kind discrete) lacks output(s) ['reward_mean', 'exploration_width'] "
        "(float32 [batch, n_actions]); serving a 'linear_thompson' model of kind discrete needs outputs "
        "['q_values', 'action_probabilities', 'reward_mean', 'exploration_width'], the graph has "
        "['q_values', 'action_probabilities']"
    )
    assert at_load.value.tensor == "reward_mean" and at_load.value.expected == "float32 [batch, n_actions=3]"
    with pytest.raises(SignatureMismatchError) as at_deploy:
        check_signature(metadata, path)
    assert str(at_deploy.value) == str(at_load.value)
    # Continuous metadata over a discrete graph: the input serving would not feed is named.
    continuous_metadata = metadata.model_copy(
        update={"action_kind": ActionKind.CONTINUOUS, "algorithm": "sac", "actions": ["steer"]}
    ).model_copy(update={"algorithm_config": {"action_low": [-1.0], "action_high": [1.0]}})
    with pytest.raises(
        SignatureMismatchError,
        match=r"\(kind continuous\) has input\(s\) \['possible_actions_mask'\] that serving does not feed; "
        r"the continuous serving contract has inputs \['features'\]",
    ):
        load_policy(path, continuous_metadata)
    # A graph of the wrong width is refused at load too, naming the input and the expected shape.
    with pytest.raises(
        SignatureMismatchError,
        match=r"input 'features' has shape \['batch', 2\]; expected float32 \[batch, n_features=3\]",
    ):
        load_policy(
            path, metadata.model_copy(update={"algorithm": "dqn", "feature_names": ["x0", "x1", "x2"]})
        )


def test_every_served_distribution_reads_only_outputs_the_signature_requires() -> None:
    """The discrete rules (`SERVED_DISTRIBUTIONS`) read outputs the load-time check has made sure of."""
    for algorithm, rule in SERVED_DISTRIBUTIONS.items():
        metadata = ModelMetadata(
            version="m0001-rule",
            created_at=datetime.now(UTC),
            onnx_sha256="0" * 64,
            algorithm=algorithm,
            feature_names=["x"],
            actions=ACTIONS,
        )
        assert set(rule.outputs) <= {t.name for t in required_outputs(metadata)}, algorithm
    assert SERVED_DISTRIBUTIONS["linear_thompson"].outputs == (REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT)


def test_registered_versions_load_through_the_table(tmp_path) -> None:
    actor, spec, config = _actor("sac")
    registry = ModelRegistry(tmp_path / "registry")
    metadata = registry.register(
        export_continuous_policy(actor),
        feature_names=list(spec.feature_names),
        actions=["steer", "throttle"],
        algorithm="sac",
        algorithm_config=config.model_dump(mode="json"),
        input_names=[FEATURES_INPUT],
        output_names=list(CONTINUOUS_OUTPUTS),
    )
    policy = load_registered_policy(registry, metadata.version)
    assert isinstance(policy, ContinuousPolicy) and policy.version == metadata.version
    policy.probe()


def test_rows_without_a_distribution_are_named_not_sampled(thompson) -> None:
    policy, _ = thompson
    assert [t.name for t in required_outputs(policy.metadata)] == [
        Q_OUTPUT,
        PROBS_OUTPUT,
        REWARD_MEAN_OUTPUT,
        EXPLORATION_WIDTH_OUTPUT,
    ]
    probabilities = np.array([[0.5, 0.5], [np.nan, np.nan], [1.0, 0.0]])
    with pytest.raises(PolicyOutputError, match=r"rows \[1\]") as error:
        sample_categorical(probabilities, np.random.default_rng(0), "m0001-test")
    assert error.value.rows == [1]
    chosen, propensity = sample_categorical(probabilities[[0, 2]], np.random.default_rng(0), "m0001-test")
    assert chosen[1] == 0 and propensity[1] == 1.0 and propensity[0] == 0.5
