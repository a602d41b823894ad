"""Export a trained Q-network to the ONNX contract in `trainer/artifact.py`, checked for parity.

Every export is run through onnxruntime and compared with PyTorch before it is handed
on, so a graph that computes something else never reaches the registry.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from trainer.artifact import FEATURES_INPUT, MASK_INPUT, PROBS_OUTPUT, Q_OUTPUT
from trainer.dqn import QNetwork
from trainer.errors import ExportParityError

PARITY_ATOL = 1e-4


class ServedGraph(nn.Module):
    """(features, possible_actions_mask) → (q_values, action_probabilities)."""

    def __init__(self, network: QNetwork, softmax_temperature: float):
        super().__init__()
        self.network = network
        self.temperature = float(softmax_temperature)

    def forward(
        self, features: torch.Tensor, possible_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.network(features, possible_mask)
        probabilities = torch.softmax(q / self.temperature, dim=1)
        return q, probabilities


def export_model(
    network: QNetwork,
    softmax_temperature: float,
    sample_features: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    seed: int = 0,
) -> bytes:
    """Return ONNX bytes (opset 17, dynamic batch) after checking them against PyTorch.

    Without samples, a random batch with NaN features and partly masked actions is used.
    Raises `ExportParityError` if any output differs by more than 1e-4.
    """
    if sample_features is None or sample_mask is None:
        sample_features, sample_mask = parity_sample(network.n_features, network.n_actions, seed=seed)
    graph = ServedGraph(network, softmax_temperature).eval()
    example = (torch.as_tensor(sample_features[:2], dtype=torch.float32), torch.as_tensor(sample_mask[:2]))
    buffer = io.BytesIO()
    torch.onnx.export(
        graph,
        example,
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=[FEATURES_INPUT, MASK_INPUT],
        output_names=[Q_OUTPUT, PROBS_OUTPUT],
        dynamic_axes={name: {0: "batch"} for name in (FEATURES_INPUT, MASK_INPUT, Q_OUTPUT, PROBS_OUTPUT)},
    )
    onnx_bytes = buffer.getvalue()
    check_parity(graph, onnx_bytes, sample_features, sample_mask)
    return onnx_bytes


def parity_sample(
    n_features: int, n_actions: int, rows: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random raw features with ~20% NaN and masks with at least one possible action per row."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 3.0, size=(rows, n_features)).astype(np.float32)
    features[rng.random(features.shape) < 0.2] = np.nan
    mask = (rng.random((rows, n_actions)) < 0.7).astype(np.float32)
    mask[np.arange(rows), rng.integers(0, n_actions, size=rows)] = 1.0
    return features, mask


def check_parity(
    graph: nn.Module, onnx_bytes: bytes, features: np.ndarray, mask: np.ndarray, atol: float = PARITY_ATOL
) -> float:
    """Max |torch − onnxruntime| over both outputs; -inf must match -inf exactly."""
    session = ort.InferenceSession(onnx_bytes, _single_thread(), providers=["CPUExecutionProvider"])
    ort_q, ort_p = session.run(
        [Q_OUTPUT, PROBS_OUTPUT],
        {
            FEATURES_INPUT: np.asarray(features, dtype=np.float32),
            MASK_INPUT: np.asarray(mask, dtype=np.float32),
        },
    )
    with torch.no_grad():
        torch_q, torch_p = graph(torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(mask))
    worst = 0.0
    for name, ours, theirs in ((Q_OUTPUT, torch_q.numpy(), ort_q), (PROBS_OUTPUT, torch_p.numpy(), ort_p)):
        same_inf = np.isneginf(ours) == np.isneginf(theirs)
        finite = np.isfinite(ours) & np.isfinite(theirs)
        if (
            not same_inf.all()
            or (~finite & ~np.isneginf(ours)).any()
            or (~finite & ~np.isneginf(theirs)).any()
        ):
            raise ExportParityError(
                f"ONNX output {name!r} has -inf/NaN where PyTorch does not (or vice versa); "
                "the masking or normalization did not export faithfully",
                max_abs_diff=float("inf"),
            )
        diff = float(np.max(np.abs(ours[finite] - theirs[finite]), initial=0.0))
        worst = max(worst, diff)
    if worst > atol:
        raise ExportParityError(
            f"ONNX and PyTorch outputs differ by {worst:.3g} (> {atol}); the export is not faithful",
            max_abs_diff=worst,
        )
    return worst


def _single_thread() -> ort.SessionOptions:
    """Verification sessions are short-lived: one thread avoids oversubscribing shared CPUs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
