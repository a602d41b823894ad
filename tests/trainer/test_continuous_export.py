"""Exported continuous-action graphs compute what PyTorch computes, NaN features included."""

from __future__ import annotations

import mpmath
import numpy as np
import onnx
import pytest
import torch
from continuous_timelines import ACTION_HIGH, ACTION_LOW, fit_spec, make_continuous_bandit_timelines
from scipy import stats

from trainer import (
    ContinuousOnnxPolicy,
    ExportParityError,
    PolicyInputError,
    SacConfig,
    Td3Config,
    export_continuous_policy,
)
from trainer.artifact import CONTINUOUS_OUTPUTS, FEATURES_INPUT
from trainer.continuous import build_learner
from trainer.continuous_export import check_continuous_parity, parity_features
from trainer.policies.continuous import sample_tanh_gaussian, tanh_gaussian_log_density


def _actor(kind: str):
    timelines = make_continuous_bandit_timelines(200, seed=4)
    timelines["state_features"] = [
        {"x": m["x"], "y": 3.0 * m["x"] + 1.0} for m in timelines["state_features"]
    ]
    config_type = SacConfig if kind == "sac" else Td3Config
    config = config_type(action_low=ACTION_LOW, action_high=ACTION_HIGH, hidden_sizes=[16, 16])
    torch.manual_seed(0)
    actor = build_learner(fit_spec(timelines), config).actor
    with torch.no_grad():  # large weights so some actions saturate near the bounds
        for parameter in actor.body.parameters():
            parameter.mul_(4.0)
    return actor.eval()


@pytest.mark.parametrize("kind", ["sac", "td3"])
def test_onnx_matches_torch_with_nan_features(kind: str) -> None:
    actor = _actor(kind)
    onnx_bytes = export_continuous_policy(actor)

    model = onnx.load_from_string(onnx_bytes)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == [FEATURES_INPUT]
    assert [o.name for o in model.graph.output] == list(CONTINUOUS_OUTPUTS)

    features = parity_features(2, rows=300, seed=9)
    policy = ContinuousOnnxPolicy(onnx_bytes, ACTION_LOW, ACTION_HIGH)
    mean, loc, log_std = policy.outputs(features)
    with torch.no_grad():
        torch_mean, torch_loc, torch_log_std = (t.numpy() for t in actor(torch.as_tensor(features)))
    assert mean.shape == loc.shape == log_std.shape == (300, 1)  # exported with batch 2
    for ours, theirs in ((mean, torch_mean), (loc, torch_loc), (log_std, torch_log_std)):
        assert np.isfinite(ours).all()
        assert np.max(np.abs(ours - theirs)) <= 1e-4
    assert check_continuous_parity(actor, onnx_bytes, features) <= 1e-4
    # action_mean is the squashed loc in env units, inside the bounds.
    np.testing.assert_allclose(mean, -2.0 + (np.tanh(loc) + 1.0) * 2.0, atol=1e-5)
    assert (mean >= ACTION_LOW[0]).all() and (mean <= ACTION_HIGH[0]).all()
    assert mean.min() < -1.9 and mean.max() > 1.9  # saturated rows were exercised


def test_parity_check_catches_a_graph_that_computes_something_else() -> None:
    actor = _actor("sac")
    onnx_bytes = export_continuous_policy(actor)
    with torch.no_grad():
        actor.body[0].weight.add_(0.5)
    with pytest.raises(ExportParityError, match="differ") as error:
        check_continuous_parity(actor, onnx_bytes, parity_features(2, seed=1))
    assert error.value.max_abs_diff > 1e-4


def test_policy_rejects_features_of_the_wrong_width() -> None:
    policy = ContinuousOnnxPolicy(export_continuous_policy(_actor("td3")), ACTION_LOW, ACTION_HIGH)
    with pytest.raises(PolicyInputError, match=r"\[batch, 2\]"):
        policy.outputs(np.zeros((4, 3), np.float32))


def test_sampled_actions_stay_in_bounds_and_their_density_integrates_to_one() -> None:
    rng = np.random.default_rng(0)
    loc = np.full((20_000, 1), 0.7)
    log_std = np.full((20_000, 1), np.log(0.5))
    low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
    actions = sample_tanh_gaussian(loc, log_std, low, high, rng)
    assert actions.dtype == np.float64
    assert (actions > low).all() and (actions < high).all()
    assert abs(float(np.median(actions)) - float(-2.0 + (np.tanh(0.7) + 1.0) * 2.0)) < 0.03

    grid = np.linspace(-2.0, 2.0, 40_001)[1:-1, None]
    density = np.exp(tanh_gaussian_log_density(grid, loc[:1], log_std[:1], low, high))
    assert abs(float(np.sum(density) * (grid[1, 0] - grid[0, 0])) - 1.0) < 1e-3


def _mpmath_log_density(action: float, loc: float, std: float, low: float, high: float) -> float:
    """The textbook change of variables in 50 digits: x = atanh(u), u = 2(a − low)/(high − low) − 1,
    log p(a) = log N(x; loc, std²) − log(1 − u²) − log((high − low)/2)."""
    with mpmath.workdps(50):
        half = (mpmath.mpf(high) - mpmath.mpf(low)) / 2
        u = (mpmath.mpf(action) - mpmath.mpf(low)) / half - 1
        x = mpmath.atanh(u)
        gaussian = -(((x - mpmath.mpf(loc)) / mpmath.mpf(std)) ** 2) / 2 - mpmath.log(
            mpmath.mpf(std) * mpmath.sqrt(2 * mpmath.pi)
        )
        return float(gaussian - mpmath.log(1 - u**2) - mpmath.log(half))


def test_log_density_of_a_wide_policy_is_exact_next_to_the_bounds() -> None:
    """σ = e² puts much of the mass where tanh is within 1e-6 of ±1; clipping there (float32 math)
    misstates the density by orders of magnitude, so compare with a 50-digit reference."""
    low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
    actions = np.array([[2.0 - 1e-12], [2.0 - 1e-9], [-2.0 + 1e-10], [-2.0 + 4e-7], [0.5], [1.999]])
    loc, log_std = np.full_like(actions, 0.3), np.full_like(actions, 2.0)
    expected = [_mpmath_log_density(a, 0.3, float(np.exp(2.0)), -2.0, 2.0) for a in actions[:, 0]]
    np.testing.assert_allclose(
        tanh_gaussian_log_density(actions, loc, log_std, low, high), expected, atol=1e-9
    )
    outside = np.array([[2.0], [-2.5]])
    assert np.isneginf(tanh_gaussian_log_density(outside, loc[:2], log_std[:2], low, high)).all()


def test_onnx_policy_samples_a_wide_policy_strictly_inside_the_bounds() -> None:
    """What the Gym loop explores with: the squashed Gaussian, no draw on a bound even when σ ≈ 4.5
    (float32 tanh rounds to ±1 beyond |x| ≈ 9, about 5% of these draws)."""
    actor = _actor("sac")
    with torch.no_grad():  # a constant policy: zero weights; the last bias gives loc 0.4, log std 1.5
        for parameter in actor.body.parameters():
            parameter.zero_()
        # SAC squashes the raw log std into [LOG_STD_MIN, LOG_STD_MAX] = [−5, 2]: raw = atanh(2·6.5/7 − 1).
        actor.body[-1].bias.copy_(torch.tensor([0.4, float(np.arctanh(2 * 6.5 / 7 - 1))]))
    policy = ContinuousOnnxPolicy(export_continuous_policy(actor), ACTION_LOW, ACTION_HIGH)
    features = np.zeros((20_000, 2), np.float32)
    _, loc, log_std = policy.outputs(features)
    np.testing.assert_allclose(log_std, 1.5, atol=1e-6)
    actions = policy.sample(features, np.random.default_rng(3))
    assert actions.shape == (20_000, 1) and actions.dtype == np.float64
    assert ((actions > -2.0) & (actions < 2.0)).all()
    x = 0.5 * np.log((actions[:, 0] + 2.0) / (2.0 - actions[:, 0]))  # atanh(u), kept finite next to ±1
    np.testing.assert_allclose(loc, 0.4, atol=1e-6)
    assert stats.kstest(x, stats.norm(0.4, float(np.exp(1.5))).cdf).pvalue > 1e-3
