"""Exported continuous-action graphs compute what PyTorch computes, NaN features included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from continuous_timelines import ACTION_HIGH, ACTION_LOW, fit_spec, make_continuous_bandit_timelines

from trainer import (
    ContinuousOnnxPolicy,
    ExportParityError,
    PolicyInputError,
    SacConfig,
    Td3Config,
    continuous_log_prob,
    export_continuous_policy,
    sample_actions,
)
from trainer.artifact import CONTINUOUS_OUTPUTS, FEATURES_INPUT
from trainer.continuous import build_learner
from trainer.continuous_export import check_continuous_parity, parity_features


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
    loc = np.full((20_000, 1), 0.7, np.float32)
    log_std = np.full((20_000, 1), np.log(0.5), np.float32)
    low, high = np.array(ACTION_LOW, np.float32), np.array(ACTION_HIGH, np.float32)
    actions = sample_actions(loc, log_std, low, high, rng)
    assert (actions >= low).all() and (actions <= high).all()
    assert abs(float(np.median(actions)) - float(-2.0 + (np.tanh(0.7) + 1.0) * 2.0)) < 0.03

    grid = np.linspace(-2.0, 2.0, 40_001)[1:-1, None]
    density = np.exp(continuous_log_prob(grid, loc[:1], log_std[:1], low, high))
    assert abs(float(np.sum(density) * (grid[1, 0] - grid[0, 0])) - 1.0) < 1e-3
