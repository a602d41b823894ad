"""Export any torch module with named inputs/outputs to ONNX, checked against PyTorch on every output.

`trainer.export` does this for the DQN contract; parametric DQN and the bandits have other
inputs or extra outputs and go through this one generic function instead.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from trainer.errors import ExportParityError
from trainer.export import PARITY_ATOL


def export_graph(
    graph: nn.Module,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    atol: float = PARITY_ATOL,
) -> bytes:
    """ONNX bytes (opset 17) of `graph(*inputs.values())`; raises `ExportParityError` beyond `atol`.

    The first two rows of every input trace the graph; all rows are used for the parity check.
    """
    graph = graph.eval()
    example = tuple(torch.as_tensor(np.asarray(v)[:2]) for v in inputs.values())
    buffer = io.BytesIO()
    torch.onnx.export(
        graph,
        example,
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=list(inputs),
        output_names=list(output_names),
        dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
    )
    onnx_bytes = buffer.getvalue()
    check_graph_parity(graph, onnx_bytes, inputs, output_names, atol)
    return onnx_bytes


def check_graph_parity(
    graph: nn.Module,
    onnx_bytes: bytes,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    atol: float = PARITY_ATOL,
) -> float:
    """Max |torch − onnxruntime| over all outputs; -inf must match -inf exactly, NaN is never allowed."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    theirs_all = session.run(list(output_names), {k: np.asarray(v) for k, v in inputs.items()})
    with torch.no_grad():
        ours_all = graph(*(torch.as_tensor(np.asarray(v)) for v in inputs.values()))
    if isinstance(ours_all, torch.Tensor):
        ours_all = (ours_all,)
    worst = 0.0
    for name, ours_t, theirs in zip(output_names, ours_all, theirs_all, strict=True):
        ours = ours_t.numpy()
        if (
            not (np.isneginf(ours) == np.isneginf(theirs)).all()
            or np.isnan(ours).any()
            or np.isnan(theirs).any()
        ):
            raise ExportParityError(
                f"ONNX output {name!r} has -inf/NaN where PyTorch does not (or vice versa); "
                "the masking or normalization did not export faithfully",
                max_abs_diff=float("inf"),
            )
        finite = np.isfinite(ours)
        worst = max(worst, float(np.max(np.abs(ours[finite] - theirs[finite]), initial=0.0)))
    if worst > atol:
        raise ExportParityError(
            f"ONNX and PyTorch outputs differ by {worst:.3g} (> {atol}); the export is not faithful",
            max_abs_diff=worst,
        )
    return worst
