"""Parametric-action DQN: learns a state × action-feature toy with varying candidate sets, and its
exported ONNX (scores over NaN-padded candidates) picks the best candidate on held-out steps."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from parametric_timelines import item_offers, item_value, toy_timelines, user_features

from features import FeatureType, NormalizationSpec, fit_normalization
from features.spec import OUTPUT_CLAMP
from trainer.artifact import ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT, FEATURES_INPUT, SCORES_OUTPUT
from trainer.errors import TrainingDataError
from trainer.graph_export import check_graph_parity
from trainer.parametric_data import build_parametric_transitions, candidate_tensor, fit_action_normalization
from trainer.parametric_dqn import (
    ParametricDqnConfig,
    ParametricQNetwork,
    export_parametric_model,
    parametric_parity_sample,
    train_parametric_dqn,
)


@pytest.fixture(scope="module")
def timelines() -> pd.DataFrame:
    return toy_timelines(1500, seed=0)


@pytest.fixture(scope="module")
def state_spec(timelines) -> NormalizationSpec:
    return fit_normalization(pd.DataFrame.from_records(list(timelines["state_features"])))


@pytest.fixture(scope="module")
def trained(timelines, state_spec):
    config = ParametricDqnConfig(gamma=0.5, hidden_sizes=[64, 64], num_epochs=15, learning_rate=3e-3)
    return train_parametric_dqn(timelines, state_spec, None, config)


def _normalized(spec: NormalizationSpec, raw: np.ndarray) -> np.ndarray:
    """The documented transform, written out in float64: CONTINUOUS = (x − mean)/std, QUANTILE = the
    piecewise-linear rank between the fitted quantiles (0 below the first, 1 above the last), values
    clamped to ±OUTPUT_CLAMP, missing → 0; then one presence column per feature."""
    present = np.isfinite(raw)
    values = np.zeros(raw.shape)
    for j, feature in enumerate(spec.features):
        p = feature.parameters
        x = np.where(present[:, j], raw[:, j], 0.0).astype(np.float64)
        if feature.feature_type is FeatureType.CONTINUOUS:
            y = (x - p.mean) / p.stddev
        elif feature.feature_type is FeatureType.QUANTILE:
            y = np.interp(x, p.quantiles, np.linspace(0.0, 1.0, len(p.quantiles)))
        else:
            raise AssertionError(f"no reference transform for {feature.name!r} ({feature.feature_type})")
        values[:, j] = np.where(present[:, j], np.clip(y, -OUTPUT_CLAMP, OUTPUT_CLAMP), 0.0)
    return np.hstack([values, present.astype(np.float64)])


def _reference_scores(
    network, state_spec, action_spec, features: np.ndarray, candidates: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Q(s, a) in numpy from the network's weights: MLP([normalized state | normalized action])."""
    rows, k, _ = candidates.shape
    states = np.repeat(_normalized(state_spec, features), k, axis=0)
    actions = _normalized(action_spec, candidates.reshape(rows * k, -1))
    x = np.hstack([states, actions])
    for layer in network.body:
        if isinstance(layer, torch.nn.Linear):
            x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        else:
            assert isinstance(layer, torch.nn.ReLU), layer
            x = np.maximum(x, 0.0)
    return np.where(mask > 0.5, x.reshape(rows, k), -np.inf)


def test_exported_greedy_choice_is_right_on_held_out_steps(trained):
    onnx_bytes = export_parametric_model(trained.network)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(123)
    users = [user_features(rng) for _ in range(400)]
    offers = [item_offers(rng) for _ in range(400)]
    features = np.array([[u["u0"], u["u1"]] for u in users], dtype=np.float32)
    candidates, mask = candidate_tensor(offers, trained.action_feature_names)
    assert candidates.shape[1] == 5 and (mask.sum(axis=1) < 5).any()  # the set varies per step
    (scores,) = session.run(
        [SCORES_OUTPUT],
        {FEATURES_INPUT: features, ACTION_FEATURES_INPUT: candidates, CANDIDATE_MASK_INPUT: mask},
    )
    assert np.isneginf(scores[mask == 0]).all() and np.isfinite(scores[mask == 1]).all()
    picked = scores.argmax(axis=1)
    best = np.array(
        [int(np.argmax([item_value(u, it) for it in items])) for u, items in zip(users, offers, strict=True)]
    )
    chance = float(np.mean(1.0 / mask.sum(axis=1)))
    accuracy = float((picked == best).mean())
    assert accuracy >= 0.8, f"greedy accuracy {accuracy:.2f} (chance {chance:.2f})"
    # A different candidate count than at export time works too (dynamic axis).
    (three,) = session.run(
        [SCORES_OUTPUT],
        {
            FEATURES_INPUT: features[:4],
            ACTION_FEATURES_INPUT: candidates[:4, :3],
            CANDIDATE_MASK_INPUT: mask[:4, :3],
        },
    )
    assert three.shape == (4, 3)


def test_exported_scores_match_a_numpy_reference_with_nan_features_and_padding(trained, state_spec):
    onnx_bytes = export_parametric_model(trained.network)
    features, candidates, mask = parametric_parity_sample(2, 3, rows=50, candidates=7, seed=5)
    inputs = {FEATURES_INPUT: features, ACTION_FEATURES_INPUT: candidates, CANDIDATE_MASK_INPUT: mask}
    check_graph_parity(trained.network, onnx_bytes, inputs, [SCORES_OUTPUT])  # raises if unfaithful
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (scores,) = session.run([SCORES_OUTPUT], inputs)

    expected = _reference_scores(trained.network, state_spec, trained.action_spec, features, candidates, mask)
    assert (mask == 0).any() and np.isnan(features).any() and np.isnan(candidates[mask == 1]).any()
    np.testing.assert_array_equal(np.isneginf(scores), mask == 0)
    np.testing.assert_allclose(scores[mask == 1], expected[mask == 1], rtol=1e-4, atol=1e-4)


def test_td_loss_falls_and_bad_rows_are_named():
    timelines = toy_timelines(200, seed=1)
    spec = fit_normalization(pd.DataFrame.from_records(list(timelines["state_features"])))
    result = train_parametric_dqn(
        timelines, spec, None, ParametricDqnConfig(num_epochs=6, learning_rate=3e-3)
    )
    assert result.history[-1]["train/td_loss"] < result.history[0]["train/td_loss"]
    broken = timelines.copy()
    broken.at[0, "possible_next_action_features"] = []
    with pytest.raises(TrainingDataError, match="possible_next_action_features"):
        train_parametric_dqn(broken, spec, None, ParametricDqnConfig(num_epochs=1))
    with pytest.raises(TrainingDataError, match="action_features"):
        train_parametric_dqn(timelines.drop(columns=["action_features"]), spec, None, ParametricDqnConfig())


@pytest.mark.parametrize("double_q", [False, True])
def test_normalizing_once_trains_the_weights_normalizing_every_batch_trains(state_spec, double_q):
    """Training normalizes states and candidates once; the old path ran the network's own
    normalizations on each minibatch. Same seeds, data and minibatch order: the same weights."""
    timelines = toy_timelines(120, seed=5)
    config = ParametricDqnConfig(gamma=0.5, hidden_sizes=[16], num_epochs=3, batch_size=32, double_q=double_q)
    action_spec = fit_action_normalization(timelines, config.action_normalization)

    trained = train_parametric_dqn(timelines, state_spec, None, config, action_spec=action_spec).network

    data = build_parametric_transitions(
        timelines, list(state_spec.feature_names), list(action_spec.feature_names), config.reward_clip
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = ParametricQNetwork(state_spec, action_spec, config.hidden_sizes)
    target = copy.deepcopy(network).requires_grad_(False)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(config.num_epochs):
        for rows in torch.randperm(data.n_rows, generator=shuffle).split(config.batch_size):
            with torch.no_grad():
                mask = data.next_mask[rows]
                scores = target(data.next_states[rows], data.next_candidates[rows], mask)
                if double_q:
                    best = network(data.next_states[rows], data.next_candidates[rows], mask).argmax(
                        1, keepdim=True
                    )
                    value = scores.gather(1, best).squeeze(1)
                else:
                    value = scores.max(dim=1).values
                value = torch.where(mask.sum(dim=1) > 0, value, torch.zeros_like(value))
                y = data.rewards[rows] + config.gamma * data.not_terminal[rows] * value
            q = network.q_pairs(data.states[rows], data.action_features[rows])
            loss = ((q - y) ** 2).sum() * (1 / len(rows))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for online_p, target_p in zip(network.parameters(), target.parameters(), strict=True):
                    target_p.lerp_(online_p, config.target_update_tau)

    for name, tensor in network.state_dict().items():
        assert torch.equal(trained.state_dict()[name], tensor), name
