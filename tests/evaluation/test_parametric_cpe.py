"""Parametric-action CPE: IPS/SNIPS/DR over variable candidate sets against numpy references, bad
input, and a real exported parametric Q model evaluated through the registry against its true value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from action_kind_data import item_value, parametric_timelines

from evaluation import (
    EvaluationConfig,
    EvaluationError,
    GateConfig,
    RidgeRewardModelConfig,
    evaluate_and_gate,
    evaluate_candidate_probabilities,
    evaluate_policy,
)
from features import NormalizationSpec, fit_normalization, frame_from_feature_maps
from trainer import ModelRegistry, SoftmaxExploration
from trainer.artifact import ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT, FEATURES_INPUT, SCORES_OUTPUT
from trainer.onnx_policy import load_registered_policy
from trainer.parametric_dqn import ParametricDqnConfig, ParametricQNetwork, export_parametric_model

ITEM_FEATURES = ["x0", "x1", "price"]


def _spec(frame: pd.DataFrame) -> NormalizationSpec:
    return fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))


def _prefer_first_feature(frame: pd.DataFrame, width: int) -> np.ndarray:
    """A target over each row's candidates ∝ exp(x0), zero on padding: [rows, width]."""
    out = np.zeros((len(frame), width))
    for i, items in enumerate(frame["possible_action_features"]):
        score = np.exp([item["x0"] for item in items])
        out[i, : len(items)] = score / score.sum()
    return out


def test_ips_snips_and_dr_match_numpy_references() -> None:
    frame = parametric_timelines(300, seed=2, steps=1, noise=0.0)
    target = _prefer_first_feature(frame, 6)  # one more column than the longest row: padding
    config = EvaluationConfig(bootstrap_samples=20, min_rows=1, reward_model=RidgeRewardModelConfig(l2=0.0))
    report = evaluate_candidate_probabilities(frame, target, "prefers-x0", config, _spec(frame))

    chosen = np.array([int(a.removeprefix("item")) for a in frame["action"]])
    w = target[np.arange(len(frame)), chosen] / frame["action_probability"].to_numpy()
    r = frame["reward"].to_numpy()
    assert report.estimates["ips"].value == pytest.approx(np.mean(w * r))
    assert report.estimates["snips"].value == pytest.approx(np.sum(w * r) / np.sum(w))
    assert report.estimates["dr"].effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    # Noise-free r = 2 + u·(x0, x1) lies in the joint model's class: q̂ exact, DR = DM = Σ_k π_k r_k.
    exact = np.mean(
        [
            sum(p * item_value(user, item) for p, item in zip(probs, items, strict=False))
            for user, items, probs in zip(
                frame["state_features"], frame["possible_action_features"], target, strict=True
            )
        ]
    )
    assert report.reward_model.rmse < 1e-6
    assert report.estimates["dr"].value == pytest.approx(exact, abs=1e-6)
    assert report.estimates["dm"].value == pytest.approx(exact, abs=1e-6)
    assert report.action_kind == "parametric" and report.headline == "dr"
    x0 = next(d for d in report.action_dimensions if d.name == "x0")
    expected_x0 = np.mean(
        [
            sum(p * it["x0"] for p, it in zip(probs, items, strict=False))
            for items, probs in zip(frame["possible_action_features"], target, strict=True)
        ]
    )
    assert x0.target_mean == pytest.approx(expected_x0)
    assert x0.logged_mean == pytest.approx(np.mean([f["x0"] for f in frame["action_features"]]))


def test_bad_parametric_input_names_the_column() -> None:
    frame = parametric_timelines(20, seed=0, steps=1)
    config = EvaluationConfig(bootstrap_samples=20, min_rows=1)
    target = _prefer_first_feature(frame, 5)
    with pytest.raises(EvaluationError, match="parametric") as info:
        evaluate_candidate_probabilities(
            frame.drop(columns=["possible_action_features"]), target, "m", config, _spec(frame)
        )
    assert info.value.column == "possible_action_features"
    bad = frame.copy()
    bad.at[3, "action"] = "item9"
    with pytest.raises(EvaluationError, match="not one of their candidates") as info:
        evaluate_candidate_probabilities(bad, target, "m", config, _spec(frame))
    assert info.value.column == "action" and info.value.rows == ["p0-000003#1"]
    padded = target.copy()
    padded[:, -1] = 0.5  # probability on a padding column
    with pytest.raises(EvaluationError, match="0 on padding"):
        evaluate_candidate_probabilities(frame, padded, "m", config, _spec(frame))


def _register_parametric_model(registry: ModelRegistry, logged: pd.DataFrame) -> str:
    torch.manual_seed(5)
    state_spec = _spec(logged)
    items = [item for row in logged["possible_action_features"] for item in row]
    action_spec = fit_normalization(frame_from_feature_maps(items))
    network = ParametricQNetwork(state_spec, action_spec, [16])
    with torch.no_grad():  # larger weights: a target clearly unlike the uniform logging policy
        for parameter in network.body.parameters():
            parameter.mul_(3.0)
    return registry.register(
        export_parametric_model(network),
        feature_names=list(state_spec.feature_names),
        actions=[],
        action_feature_names=list(action_spec.feature_names),
        algorithm="parametric_dqn",
        algorithm_config=ParametricDqnConfig(hidden_sizes=[16]).model_dump(mode="json"),
        exploration=SoftmaxExploration(temperature=0.5, epsilon=0.1),
        input_names=[FEATURES_INPUT, ACTION_FEATURES_INPUT, CANDIDATE_MASK_INPUT],
        output_names=[SCORES_OUTPUT],
    ).version


def test_exported_parametric_model_is_evaluated_against_its_true_value(tmp_path: Path) -> None:
    logged = parametric_timelines(2000, seed=7, steps=2)
    registry = ModelRegistry(tmp_path / "registry")
    version = _register_parametric_model(registry, logged)
    policy = load_registered_policy(registry, version)

    # The truth on the logged contexts (what DR estimates given them): the served distribution
    # times each offered item's expected reward.
    def true_value(frame: pd.DataFrame) -> np.ndarray:
        candidates, mask = policy.candidates(frame["possible_action_features"].tolist())
        probs = policy.probabilities(policy.features(frame["state_features"].tolist()), candidates, mask)
        values = np.zeros_like(probs, dtype=np.float64)
        offers = zip(frame["state_features"], frame["possible_action_features"], strict=True)
        for i, (user, items) in enumerate(offers):
            values[i, : len(items)] = [item_value(user, item) for item in items]
        return np.sum(probs * values, axis=1)

    in_sample = true_value(logged)

    config = EvaluationConfig(bootstrap_samples=100, min_rows=1000, gamma=1.0)
    report = evaluate_policy(logged, policy, config, _spec(logged))
    dr = report.estimates["dr"]
    assert dr.effective_sample_size < 0.8 * report.n_decisions  # the model is not the logging policy
    assert dr.value == pytest.approx(in_sample.mean(), abs=0.01)
    assert dr.ci_low <= in_sample.mean() <= dr.ci_high, (dr, in_sample.mean())
    # Two steps, γ = 1: an episode's value is the sum of its two decisions' values.
    episode_truth = float(in_sample.reshape(-1, 2).sum(axis=1).mean())
    for name in ("wdr", "sequential_dr"):
        e = report.estimates[name]
        assert e.ci_low - 0.02 <= episode_truth <= e.ci_high + 0.02, (name, e, episode_truth)
    assert report.n_episodes == 2000 and report.n_decisions == 4000

    gated, decision = evaluate_and_gate(
        logged,
        registry,
        version,
        config.model_copy(update={"gate": GateConfig(threshold=0.0)}),
        _spec(logged),
        tmp_path / "r",
    )
    assert gated is not None and gated.estimates["dr"].value == pytest.approx(dr.value)
    assert decision.approved and registry.deployed() == version
    assert "Action dimensions" in (tmp_path / "r" / version / "report.html").read_text()
