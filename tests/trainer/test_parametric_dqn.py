"""Parametric-action DQN: learns a state × action-feature toy with varying candidate sets, and its
exported ONNX (scores over NaN-padded candidates) picks the best candidate on held-out steps."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from parametric_timelines import item_offers, item_value, toy_timelines, user_features

from features import fit_normalization
from trainer.artifact import ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT, FEATURES_INPUT, SCORES_OUTPUT
from trainer.errors import TrainingDataError
from trainer.graph_export import check_graph_parity
from trainer.parametric_data import candidate_tensor
from trainer.parametric_dqn import (
    ParametricDqnConfig,
    export_parametric_model,
    parametric_parity_sample,
    train_parametric_dqn,
)


@pytest.fixture(scope="module")
def trained():
    timelines = toy_timelines(1500, seed=0)
    spec = fit_normalization(pd.DataFrame.from_records(list(timelines["state_features"])))
    config = ParametricDqnConfig(gamma=0.5, hidden_sizes=[64, 64], num_epochs=15, learning_rate=3e-3)
    return train_parametric_dqn(timelines, spec, None, config)


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


def test_export_parity_with_nan_features_and_padding(trained):
    onnx_bytes = export_parametric_model(trained.network)
    features, candidates, mask = parametric_parity_sample(2, 3, rows=50, candidates=7, seed=5)
    worst = check_graph_parity(
        trained.network,
        onnx_bytes,
        {FEATURES_INPUT: features, ACTION_FEATURES_INPUT: candidates, CANDIDATE_MASK_INPUT: mask},
        [SCORES_OUTPUT],
    )
    assert worst <= 1e-4
    with torch.no_grad():
        scores = trained.network(
            torch.as_tensor(features), torch.as_tensor(candidates), torch.as_tensor(mask)
        )
    assert torch.isneginf(scores[torch.as_tensor(mask) == 0]).all()


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
