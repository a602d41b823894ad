"""Every algorithm in `TRAIN_FUNCTIONS`: train on tiny data, export + register through the one dispatch,
compare the registered ONNX graph with PyTorch on fresh inputs (STYLE.md: one shared test), and deploy
it past its kind's serving-signature check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from continuous_timelines import ACTION_HIGH, ACTION_LOW, make_continuous_bandit_timelines
from continuous_timelines import fit_spec as fit_continuous_spec
from parametric_timelines import toy_timelines
from pydantic import TypeAdapter
from trainer_timelines import BANDIT_ACTIONS, fit_spec, make_bandit_timelines

from contracts import ActionKind
from features import fit_normalization, frame_from_feature_maps
from trainer import (
    TRAIN_FUNCTIONS,
    AlgorithmConfig,
    ContinuousActor,
    EpsilonGreedyExploration,
    ModelRegistry,
    train_and_register,
    train_function,
)
from trainer.algorithms import (
    ALGORITHM_KINDS,
    EXPORT_FUNCTIONS,
    UnknownAlgorithmError,
    algorithm_kind,
    export_function,
)
from trainer.artifact import EXPLORATION_WIDTH_OUTPUT, REWARD_MEAN_OUTPUT
from trainer.bandits import LinearBandit
from trainer.continuous_export import parity_features
from trainer.export import ServedGraph, parity_sample
from trainer.parametric_dqn import ParametricQNetwork, parametric_parity_sample

TINY = {"num_epochs": 2, "batch_size": 32, "hidden_sizes": [16]}
CONTINUOUS = {"action_low": ACTION_LOW, "action_high": ACTION_HIGH, **TINY}


def _discrete():
    timelines = make_bandit_timelines(120, seed=5)
    return timelines, fit_spec(timelines), BANDIT_ACTIONS


def _continuous():
    timelines = make_continuous_bandit_timelines(120, seed=5)
    return timelines, fit_continuous_spec(timelines), ["a"]


def _parametric():
    timelines = toy_timelines(60, seed=5)
    return timelines, fit_normalization(frame_from_feature_maps(timelines["state_features"].tolist())), None


# One tiny case per algorithm type: (config fields, data builder, the kind of action it serves).
# A new algorithm adds a line here.
CASES = {
    "dqn": ({"n_step": 2, **TINY}, _discrete, "discrete"),
    "cql": ({"cql_alpha": 0.5, **TINY}, _discrete, "discrete"),
    "linucb": ({}, _discrete, "discrete"),
    "linear_thompson": ({}, _discrete, "discrete"),
    "neural_bandit": (TINY, _discrete, "discrete"),
    "sac": (CONTINUOUS, _continuous, "continuous"),
    "td3": (CONTINUOUS, _continuous, "continuous"),
    "parametric_dqn": (TINY, _parametric, "parametric"),
}


def test_every_algorithm_has_one_line_in_each_table() -> None:
    assert set(ALGORITHM_KINDS) == set(EXPORT_FUNCTIONS) == set(TRAIN_FUNCTIONS) == set(CASES)
    for algorithm_type, (_, _, kind) in CASES.items():
        assert algorithm_kind(algorithm_type) == ActionKind(kind)
        assert callable(export_function(algorithm_type))  # the "module:function" target imports
    with pytest.raises(UnknownAlgorithmError, match=r"'ppo' has no exporter; known: \['cql', 'dqn'"):
        export_function("ppo")
    with pytest.raises(UnknownAlgorithmError, match="'ppo' has no action kind"):
        algorithm_kind("ppo")


@pytest.mark.parametrize("algorithm_type", sorted(TRAIN_FUNCTIONS))
def test_every_algorithm_exports_onnx_that_matches_pytorch(algorithm_type: str, tmp_path: Path) -> None:
    assert algorithm_type in CASES, f"add a tiny case for {algorithm_type!r} to CASES in this test"
    fields, build, kind = CASES[algorithm_type]
    config = TypeAdapter(AlgorithmConfig).validate_python({"type": algorithm_type, **fields})
    timelines, spec, actions = build()
    registry = ModelRegistry(tmp_path / "registry")

    metadata = train_and_register(
        timelines, spec, actions, config, registry, tmp_path / "tb", EpsilonGreedyExploration()
    )

    path, metadata = registry.get(metadata.version)  # verifies hash and the graph's input/output names
    assert metadata.algorithm == algorithm_type and metadata.action_kind == ActionKind(kind)
    assert (path.parent / "metadata.json").read_text().count(f'"action_kind": "{kind}"') == 1
    assert TypeAdapter(AlgorithmConfig).validate_python(metadata.algorithm_config) == config
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = _retrain_for_reference(algorithm_type, config, timelines, spec, actions, tmp_path)
    if isinstance(network, ContinuousActor):
        bounds = (metadata.algorithm_config["action_low"], metadata.algorithm_config["action_high"])
        assert bounds == (ACTION_LOW, ACTION_HIGH) and metadata.actions == ["a"]
        features = parity_features(len(spec.feature_names), seed=123)
        with torch.no_grad():
            ours = network(torch.as_tensor(features))
        theirs = session.run(metadata.output_names, {"features": features})
    elif isinstance(network, ParametricQNetwork):  # scores per candidate; padding is -inf
        assert metadata.action_feature_names == network_action_names(timelines)
        features, candidates, mask = parametric_parity_sample(
            len(spec.feature_names), len(metadata.action_feature_names), seed=123
        )
        with torch.no_grad():
            ours = [network(*(torch.as_tensor(a) for a in (features, candidates, mask)))]
        theirs = session.run(
            metadata.output_names,
            {"features": features, "action_features": candidates, "candidate_mask": mask},
        )
    else:  # the discrete contract: network(features, possible_mask) → masked Q and probabilities
        features, mask = parity_sample(len(spec.feature_names), len(actions), seed=123)
        with torch.no_grad():
            ours = list(
                ServedGraph(network, config.softmax_temperature)(
                    torch.as_tensor(features), torch.as_tensor(mask)
                )
            )
            if isinstance(network, LinearBandit):  # linear bandits add their posterior mean and width
                assert metadata.output_names[2:] == [REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT]
                ours += network.mean_and_width(torch.as_tensor(features))
        theirs = session.run(metadata.output_names, {"features": features, "possible_actions_mask": mask})
    assert len(theirs) == len(ours), (metadata.output_names, len(ours))
    for torch_out, onnx_out in zip(ours, theirs, strict=True):
        torch_out = torch_out.numpy()
        assert np.array_equal(np.isneginf(torch_out), np.isneginf(onnx_out))
        finite = np.isfinite(torch_out)
        assert finite.any() and np.allclose(torch_out[finite], onnx_out[finite], atol=1e-4)

    registry.deploy(metadata.version, reason="fits its kind's serving signature")
    assert registry.deployed() == metadata.version


def network_action_names(timelines) -> list[str]:
    return sorted({name for offers in timelines["possible_action_features"] for o in offers for name in o})


def _retrain_for_reference(algorithm_type, config, timelines, spec, actions, tmp_path: Path):
    """Training is seeded and deterministic, so a second run gives the registered model's weights."""
    return train_function(algorithm_type)(timelines, spec, actions, config, tmp_path / "again").network
