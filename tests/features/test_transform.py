"""normalize (numpy) == NormalizationModule (torch) == the exported ONNX graph (onnxruntime)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from features import (
    FeatureNormalization,
    FeatureType,
    NormalizationModule,
    NormalizationParameters,
    NormalizationSpec,
    build_feature_matrix,
    fit_normalization,
    normalize,
)


def _spec() -> NormalizationSpec:
    """Every feature type, in an order that interleaves types (so column reordering is exercised)."""
    P = NormalizationParameters  # noqa: N806
    features = [
        FeatureNormalization(
            name="age", feature_type=FeatureType.CONTINUOUS, parameters=P(mean=40.0, stddev=12.0)
        ),
        FeatureNormalization(
            name="weekday", feature_type=FeatureType.ENUM, parameters=P(possible_values=[0, 1, 2, 5])
        ),
        FeatureNormalization(name="clicked", feature_type=FeatureType.BINARY),
        FeatureNormalization(name="ctr", feature_type=FeatureType.PROBABILITY),
        FeatureNormalization(
            name="spend",
            feature_type=FeatureType.BOXCOX,
            parameters=P(mean=0.1, stddev=1.2, boxcox_lambda=0.15, boxcox_shift=0.5),
        ),  # fmt: skip
        FeatureNormalization(
            name="spend_log",
            feature_type=FeatureType.BOXCOX,
            parameters=P(mean=-0.2, stddev=0.9, boxcox_lambda=0.0, boxcox_shift=1.0),
        ),  # fmt: skip
        FeatureNormalization(
            name="latency",
            feature_type=FeatureType.QUANTILE,
            parameters=P(quantiles=[-3.0, -1.0, 0.0, 0.5, 4.0]),
        ),
        FeatureNormalization(
            name="plan", feature_type=FeatureType.ENUM, parameters=P(possible_values=[3, 7])
        ),
        FeatureNormalization(
            name="volume", feature_type=FeatureType.CONTINUOUS_ACTION, parameters=P(min_value=-2, max_value=6)
        ),
        FeatureNormalization(name="raw", feature_type=FeatureType.DO_NOT_PREPROCESS),
        FeatureNormalization(
            name="height", feature_type=FeatureType.CONTINUOUS, parameters=P(mean=170.0, stddev=9.0)
        ),
        FeatureNormalization(
            name="latency2", feature_type=FeatureType.QUANTILE, parameters=P(quantiles=[0.0, 10.0, 100.0])
        ),
    ]
    return NormalizationSpec.create(features)


def _inputs(spec: NormalizationSpec, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(7)
    raw = (rng.normal(0.0, 3.0, (n, spec.n_features)) * rng.choice([0.1, 1.0, 100.0], (n, 1))).astype(
        np.float32
    )
    raw[:, 1] = rng.integers(0, 8, n)  # weekday, including unseen 3, 4, 6, 7
    raw[:, 3] = rng.random(n)  # ctr
    raw[:, 7] = rng.integers(2, 9, n)  # plan, mostly unseen
    adversarial = [np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-30, 0.0, 1.0, -1.0, 1e-6, 0.99999994, 7.0]
    rows = np.array([[v] * spec.n_features for v in adversarial], dtype=np.float32)
    mixed = raw[: len(adversarial)].copy()
    mixed[np.arange(len(adversarial)) % spec.n_features == 0] = np.nan  # whole-row missing
    mixed[:, ::3] = np.nan  # some columns missing
    return np.concatenate([raw, rows, mixed])


def _onnx(module: NormalizationModule, n_features: int, path: Path) -> ort.InferenceSession:
    torch.onnx.export(
        module, (torch.zeros(2, n_features),), str(path), dynamo=False, opset_version=17,
        input_names=["features"], output_names=["normalized"],
        dynamic_axes={"features": {0: "batch"}, "normalized": {0: "batch"}},
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _spec_with_clip_log() -> NormalizationSpec:
    """The same, plus CLIP_LOG (log of the value floored at 1e-5) at the end."""
    extra = FeatureNormalization(name="bytes", feature_type=FeatureType.CLIP_LOG)
    return NormalizationSpec.create([*_spec().features, extra])


@pytest.mark.parametrize("make_spec", [_spec, _spec_with_clip_log])
def test_numpy_torch_onnx_agree_on_random_and_adversarial_inputs(tmp_path: Path, make_spec) -> None:
    spec = make_spec()
    raw = _inputs(spec)
    expected = normalize(spec, raw)
    module = NormalizationModule(spec)
    got_torch = module(torch.from_numpy(raw)).numpy()
    got_onnx = _onnx(module, spec.n_features, tmp_path / "norm.onnx").run(None, {"features": raw})[0]

    assert expected.shape == got_torch.shape == got_onnx.shape == (len(raw), spec.output_dim)
    assert expected.dtype == got_torch.dtype == got_onnx.dtype == np.float32
    for name, got in (("torch", got_torch), ("onnx", got_onnx)):
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)
    assert np.isfinite(expected).all()
    assert np.abs(expected).max() <= 11.5
    # Batch of one through ONNX (the serving shape) matches too.
    one = _onnx(module, spec.n_features, tmp_path / "one.onnx").run(None, {"features": raw[:1]})[0]
    np.testing.assert_allclose(one, expected[:1], atol=1e-5, rtol=0)


def test_output_layout_values_and_missing_semantics() -> None:
    spec = _spec()
    names = spec.feature_names
    row = {
        "age": 52.0, "weekday": 5.0, "clicked": 0.0, "ctr": 0.5, "spend": None, "spend_log": float("nan"),
        "latency": 0.25, "plan": 4.0, "volume": 2.0, "raw": 1000.0, "height": float("inf"), "latency2": 55.0,
        "not_in_spec": 1.0,
    }  # fmt: skip
    raw = build_feature_matrix([row, {}], names)
    assert raw.dtype == np.float32 and raw.shape == (2, len(names))
    assert np.isnan(raw[1]).all() and np.isnan(raw[0, names.index("spend")])
    out = normalize(spec, raw)
    values, mask = out[:, : -spec.n_features], out[:, -spec.n_features :]
    expected_values = [
        1.0,  # age (52-40)/12
        0.0, 0.0, 0.0, 1.0,  # weekday one-hot over [0, 1, 2, 5]
        0.0,  # clicked
        0.0,  # ctr logit(0.5)
        0.0, 0.0,  # spend, spend_log missing
        0.625,  # latency: segment 0.0..0.5 half way → (2 + 0.5) / 4
        0.0, 0.0,  # plan 4 is unseen → all zeros
        0.0,  # volume 2 is mid-range of [-2, 6]
        11.5,  # raw 1000 clamped
        0.0,  # height inf → missing
        0.75,  # latency2 55 → (1 + 45/90) / 2
    ]  # fmt: skip
    np.testing.assert_allclose(values[0], expected_values, atol=1e-6)
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(out[1], np.zeros(spec.output_dim))


def test_probability_clamp_and_boxcox_log_limit() -> None:
    spec = _spec()
    raw = np.full((2, spec.n_features), np.nan, dtype=np.float32)
    raw[:, spec.feature_names.index("ctr")] = [0.0, 1.0]
    raw[:, spec.feature_names.index("spend_log")] = [math.e - 1.0, 0.0]
    out = normalize(spec, raw)
    ctr_col = 1 + 4 + 1
    assert out[:, ctr_col].tolist() == [-11.5, 11.5]  # logit(1e-5) = -11.51, then the output clamp
    log_col = ctr_col + 2
    assert out[0, log_col] == pytest.approx((1.0 + 0.2) / 0.9, abs=1e-5)  # log(e) = 1, standardized


def test_shape_mismatch_is_a_clear_error() -> None:
    spec = _spec()
    with pytest.raises(ValueError, match=r"shape \[N, 12\]"):
        normalize(spec, np.zeros((3, 5), dtype=np.float32))


def test_fitted_spec_normalizes_its_own_data_to_standard_scale() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(100.0, 20.0, 5000), "p": rng.random(5000)})
    spec = fit_normalization(frame)
    out = normalize(spec, frame.to_numpy(np.float32))
    assert abs(out[:, 0].mean()) < 0.01 and out[:, 0].std() == pytest.approx(1.0, abs=0.01)


def test_clip_log_floors_zero_and_negatives_and_keeps_missing_missing() -> None:
    spec = _spec_with_clip_log()
    raw = np.full((4, spec.n_features), np.nan, dtype=np.float32)
    raw[:, -1] = [math.e, 0.0, -5.0, np.nan]
    out = normalize(spec, raw)
    column = spec.output_dim - spec.n_features - 1  # last value column
    np.testing.assert_allclose(out[:, column], [1.0, -11.5, -11.5, 0.0], atol=1e-5)  # log(1e-5) clamps
    np.testing.assert_array_equal(out[:, -1], [1, 1, 1, 0])
