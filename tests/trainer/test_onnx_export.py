"""The exported graph computes what PyTorch computes, including NaN features and masked actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from trainer_timelines import BANDIT_ACTIONS, fit_spec, make_bandit_timelines

from trainer import DqnConfig, ExportParityError, QNetwork, check_parity, export_model, train_dqn
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, PROBS_OUTPUT, Q_OUTPUT
from trainer.export import ServedGraph, parity_sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> QNetwork:
    timelines = make_bandit_timelines(200, seed=5)
    config = DqnConfig(gamma=0.0, num_epochs=5, batch_size=64, hidden_sizes=[16, 16])
    return train_dqn(
        timelines, fit_spec(timelines), BANDIT_ACTIONS, config, tmp_path_factory.mktemp("tb")
    ).network


@pytest.mark.parametrize("dueling", [True, False])
def test_onnx_matches_torch_with_nan_features_and_masked_actions(trained: QNetwork, dueling: bool) -> None:
    network = trained
    if not dueling:
        timelines = make_bandit_timelines(50, seed=6)
        network = QNetwork(fit_spec(timelines), len(BANDIT_ACTIONS), [8], dueling=False).eval()
    temperature = 0.5
    onnx_bytes = export_model(network, softmax_temperature=temperature)

    model = onnx.load_from_string(onnx_bytes)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == [FEATURES_INPUT, MASK_INPUT]
    assert [o.name for o in model.graph.output] == [Q_OUTPUT, PROBS_OUTPUT]

    features, mask = parity_sample(2, len(BANDIT_ACTIONS), rows=300, seed=11)
    features[0] = np.nan  # a row with every feature missing
    mask[1] = [0.0, 1.0, 0.0]  # a row with a single possible action
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    q, probs = session.run(None, {FEATURES_INPUT: features, MASK_INPUT: mask})
    with torch.no_grad():
        torch_q = network(torch.as_tensor(features), torch.as_tensor(mask)).numpy()

    assert q.shape == probs.shape == (300, 3)  # dynamic batch: exported with batch 2
    assert np.array_equal(np.isneginf(q), mask == 0) and np.isfinite(q[mask == 1]).all()
    np.testing.assert_allclose(q[mask == 1], torch_q[mask == 1], atol=1e-4)
    assert (probs[mask == 0] == 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[1, 1] == pytest.approx(1.0)
    z = np.where(mask == 1, torch_q / temperature, -np.inf)
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    (single_q, _) = session.run(None, {FEATURES_INPUT: features[:1], MASK_INPUT: mask[:1]})
    np.testing.assert_allclose(single_q[mask[:1] == 1], q[:1][mask[:1] == 1], atol=1e-6)


def test_parity_check_rejects_a_graph_that_computes_something_else(trained: QNetwork, tmp_path: Path) -> None:
    onnx_bytes = export_model(trained, softmax_temperature=1.0)
    other = QNetwork(fit_spec(make_bandit_timelines(50, seed=7)), len(BANDIT_ACTIONS), [16, 16], dueling=True)
    features, mask = parity_sample(2, len(BANDIT_ACTIONS), seed=3)

    assert check_parity(ServedGraph(trained, 1.0), onnx_bytes, features, mask) < 1e-4
    with pytest.raises(ExportParityError) as caught:
        check_parity(ServedGraph(other.eval(), 1.0), onnx_bytes, features, mask)
    assert caught.value.max_abs_diff > 1e-4
