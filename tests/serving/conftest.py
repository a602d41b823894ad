"""Tiny real models for serving tests: ONNX graphs built with onnx.helper, registered in a real registry.

Q = nan_to_zero(features) @ W + b, impossible actions -inf; exported per the contract in
trainer/artifact.py. Built without torch so each model costs milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from contracts import Topics
from serving import ServingConfig
from trainer import ModelRegistry
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, PROBS_OUTPUT, Q_OUTPUT
from trainer.policy import ExplorationConfig, SoftmaxExploration

FEATURES = ["f_age", "f_clicks", "f_hour"]
ACTIONS = ["email", "push", "none"]


def linear_q_onnx(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """ONNX bytes of Q = nan→0(features) @ weights + bias, masked to -inf, plus softmax probabilities."""
    n_features, n_actions = weights.shape
    nodes = [
        helper.make_node("IsNaN", [FEATURES_INPUT], ["is_nan"]),
        helper.make_node("Where", ["is_nan", "zero", FEATURES_INPUT], ["filled"]),
        helper.make_node("MatMul", ["filled", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["q_all"]),
        helper.make_node("Greater", [MASK_INPUT, "half"], ["possible"]),
        helper.make_node("Where", ["possible", "q_all", "neg_inf"], [Q_OUTPUT]),
        helper.make_node("Softmax", [Q_OUTPUT], [PROBS_OUTPUT], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(np.asarray(weights, dtype=np.float32), "W"),
        numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), "neg_inf"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_q",
        [
            helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", n_features]),
            helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT, ["batch", n_actions]),
        ],
        [
            helper.make_tensor_value_info(Q_OUTPUT, TensorProto.FLOAT, ["batch", n_actions]),
            helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["batch", n_actions]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def register_model(
    registry: ModelRegistry,
    seed: int,
    exploration: ExplorationConfig | None = None,
) -> str:
    """Register a random linear model; returns its version."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, size=(len(FEATURES), len(ACTIONS)))
    bias = rng.normal(0.0, 1.0, size=len(ACTIONS))
    metadata = registry.register(
        linear_q_onnx(weights, bias),
        feature_names=FEATURES,
        actions=ACTIONS,
        algorithm="linear_test",
        exploration=exploration or SoftmaxExploration(temperature=1.0, epsilon=0.1),
    )
    return metadata.version


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def config(local_stack, topics: Topics, registry: ModelRegistry) -> ServingConfig:
    """Serving on the session broker and this test's registry: fast polling, a fixed seed, batches of 300."""
    return ServingConfig(
        registry_root=registry.root,
        bootstrap_servers=local_stack.bootstrap_servers,
        topics=topics,
        poll_interval_s=0.1,
        seed=7,
        max_batch=300,
    )
