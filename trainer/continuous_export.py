"""Export a continuous-action actor to ONNX (contract in `trainer.artifact`) and run it.

Like the discrete export, every graph is compared with PyTorch through onnxruntime before it is
handed on. `ContinuousOnnxPolicy` runs in-memory graph bytes with the env's bounds (the Gym loop
explores through it); it samples with `trainer.policies.continuous.sample_tanh_gaussian`, the same
float64 function the served `ContinuousPolicy` samples with, whose log density is
`tanh_gaussian_log_density`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from trainer.artifact import (
    ACTION_LOC_OUTPUT,
    ACTION_LOG_STD_OUTPUT,
    ACTION_MEAN_OUTPUT,
    CONTINUOUS_OUTPUTS,
    FEATURES_INPUT,
)
from trainer.continuous import ContinuousActor
from trainer.errors import ExportParityError, PolicyInputError
from trainer.policies.continuous import sample_tanh_gaussian

PARITY_ATOL = 1e-4


def export_continuous_policy(
    actor: ContinuousActor, sample_features: np.ndarray | None = None, seed: int = 0, check: bool = True
) -> bytes:
    """Return ONNX bytes (opset 17, dynamic batch) of `actor`, parity-checked against PyTorch.

    Without samples, a random batch with ~20% NaN features is used. Raises `ExportParityError`
    if any output differs by more than 1e-4. `check=False` skips the check (the online loop
    re-exports the same architecture many times and checks the first export only).
    """
    if sample_features is None:
        sample_features = parity_features(actor.n_features, seed=seed)
    actor = actor.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        actor,
        (torch.as_tensor(sample_features[:2], dtype=torch.float32),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=[FEATURES_INPUT],
        output_names=list(CONTINUOUS_OUTPUTS),
        dynamic_axes={name: {0: "batch"} for name in (FEATURES_INPUT, *CONTINUOUS_OUTPUTS)},
    )
    onnx_bytes = buffer.getvalue()
    if check:
        check_continuous_parity(actor, onnx_bytes, sample_features)
    return onnx_bytes


def parity_features(n_features: int, rows: int = 64, seed: int = 0) -> np.ndarray:
    """Random raw features with ~20% NaN, one row all-NaN."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 3.0, size=(rows, n_features)).astype(np.float32)
    features[rng.random(features.shape) < 0.2] = np.nan
    features[0] = np.nan
    return features


def check_continuous_parity(
    actor: ContinuousActor, onnx_bytes: bytes, features: np.ndarray, atol: float = PARITY_ATOL
) -> float:
    """Max |torch − onnxruntime| over all three outputs; raise if any is non-finite or above `atol`."""
    session = ort.InferenceSession(onnx_bytes, _single_thread(), providers=["CPUExecutionProvider"])
    theirs = session.run(list(CONTINUOUS_OUTPUTS), {FEATURES_INPUT: np.asarray(features, np.float32)})
    with torch.no_grad():
        ours = [t.numpy() for t in actor(torch.as_tensor(features, dtype=torch.float32))]
    worst = 0.0
    for name, a, b in zip(CONTINUOUS_OUTPUTS, ours, theirs, strict=True):
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ExportParityError(
                f"output {name!r} is not finite (torch or onnxruntime); missing features (NaN) must be "
                "masked by the normalization inside the graph",
                max_abs_diff=float("inf"),
            )
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
    if worst > atol:
        raise ExportParityError(
            f"ONNX and PyTorch outputs differ by {worst:.3g} (> {atol}); the export is not faithful",
            max_abs_diff=worst,
        )
    return worst


class ContinuousOnnxPolicy:
    """An onnxruntime session over a continuous-action graph, with the env's action bounds."""

    def __init__(self, onnx_bytes: bytes, action_low: Sequence[float], action_high: Sequence[float]):
        self.session = ort.InferenceSession(onnx_bytes, _single_thread(), providers=["CPUExecutionProvider"])
        self.n_features = int(self.session.get_inputs()[0].shape[1])
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)

    def outputs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(action_mean in env units, action_loc, action_log_std) for raw features [B, F]."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise PolicyInputError(
                f"features must be float32 [batch, {self.n_features}] (raw, NaN = missing), "
                f"got shape {features.shape}"
            )
        mean, loc, log_std = self.session.run(
            [ACTION_MEAN_OUTPUT, ACTION_LOC_OUTPUT, ACTION_LOG_STD_OUTPUT], {FEATURES_INPUT: features}
        )
        return mean, loc, log_std

    def greedy(self, features: np.ndarray) -> np.ndarray:
        return self.outputs(features)[0]

    def sample(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float64 [B, D] explored actions in env units, strictly inside (low, high) (`sample_tanh_gaussian`)."""
        _, loc, log_std = self.outputs(features)
        return sample_tanh_gaussian(loc, log_std, self.action_low, self.action_high, rng)


def _single_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
