"""Continuous-action CPE: kernel weights and bandwidth by hand, kernel IPS/SNIPS/DR against numpy
references, bad input, and a trained SAC model evaluated and gated end to end through the registry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from action_kind_data import (
    ACTION_HIGH,
    ACTION_LOW,
    continuous_expected_reward,
    continuous_timelines,
)
from scipy.stats import norm

from evaluation import (
    EvaluationConfig,
    EvaluationError,
    KernelConfig,
    RidgeRewardModelConfig,
    evaluate_action_samples,
    evaluate_and_gate,
    kernel_weights,
    load_report,
    silverman_bandwidth,
)
from features import NormalizationSpec, fit_normalization, frame_from_feature_maps
from trainer import EpsilonGreedyExploration, ModelRegistry, SacConfig, train_and_register
from trainer.onnx_policy import load_registered_policy


def _spec(frame: pd.DataFrame) -> NormalizationSpec:
    return fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))


def test_kernel_weights_by_hand() -> None:
    # Two decisions, 1-D, h = 0.5; draws of the target (0.0, 0.4) and (1.0, 1.0); μ = 0.25 and 0.5.
    # w_1 = mean(φ(0.2/0.5), φ(0.2/0.5)) / 0.5 / 0.25 with a_1 = 0.2 (both draws 0.2 away)
    # w_2 = mean(φ(0), φ(0)) / 0.5 / 0.5 with a_2 = 1.0
    logged = np.array([[0.2], [1.0]])
    draws = np.array([[[0.0], [1.0]], [[0.4], [1.0]]])
    w = kernel_weights(logged, draws, np.log([0.25, 0.5]), np.array([0.5]))
    phi = lambda u: math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)  # noqa: E731
    assert w == pytest.approx([phi(0.4) / 0.5 / 0.25, phi(0.0) / 0.5 / 0.5])
    # 2-D product kernel: K = φ(u1/h1)/h1 · φ(u2/h2)/h2.
    w2 = kernel_weights(
        np.array([[0.0, 0.0]]), np.array([[[0.3, -0.2]]]), np.array([0.0]), np.array([0.5, 0.25])
    )
    assert w2[0] == pytest.approx(norm.pdf(0.3, scale=0.5) * norm.pdf(-0.2, scale=0.25))


def test_silverman_bandwidth_matches_the_normal_reference_rule() -> None:
    offsets = np.random.default_rng(0).normal(0.0, 2.0, size=(500, 1))
    h, sigma = silverman_bandwidth(offsets)
    std = offsets[:, 0].std(ddof=1)
    iqr = (np.percentile(offsets, 75) - np.percentile(offsets, 25)) / 1.349
    assert sigma[0] == pytest.approx(min(std, iqr))
    assert h[0] == pytest.approx((4 / 3) ** 0.2 * min(std, iqr) * 500 ** (-0.2))  # ≈ 1.06 σ n^(−1/5)
    h2, _ = silverman_bandwidth(np.column_stack([offsets[:, 0], 0.1 * offsets[:, 0]]))
    assert h2[1] / h2[0] == pytest.approx(0.1)
    assert h2[0] == pytest.approx(1.0 * min(std, iqr) * 500 ** (-1 / 6))  # (4/4)^(1/6) for D = 2
    with pytest.raises(EvaluationError, match="do not vary"):
        silverman_bandwidth(np.zeros((10, 1)))


def _small_config(**kernel: object) -> EvaluationConfig:
    return EvaluationConfig(
        bootstrap_samples=20,
        min_rows=1,
        kernel=KernelConfig(**kernel),
        reward_model=RidgeRewardModelConfig(l2=0.0),
    )


def test_kernel_ips_snips_and_dr_match_numpy_references() -> None:
    frame = continuous_timelines(400, seed=3, noise=0.0)
    x = np.array([s["x"] for s in frame["state_features"]])
    a = np.array([v[0] for v in frame["action_vector"]])
    r = frame["reward"].to_numpy()
    rng = np.random.default_rng(1)
    draws = (np.clip(SLOPE_TARGET * x, -2, 2) + 0.3 * rng.standard_normal((4, x.size)))[:, :, None]
    report = evaluate_action_samples(
        frame, draws, "target", _small_config(bandwidth=[0.4]), _spec(frame), ["a"]
    )

    density = np.mean(norm.pdf(draws[:, :, 0] - a[None, :], scale=0.4), axis=0)
    w = density / 0.25  # μ = 1/4 on [−2, 2]
    assert report.estimates["kernel_ips"].value == pytest.approx(np.mean(w * r))
    assert report.estimates["kernel_snips"].value == pytest.approx(np.sum(w * r) / np.sum(w))
    assert report.kernel is not None and report.kernel.bandwidth == [0.4]
    assert report.kernel.scale is None  # a fixed bandwidth scales no σ̂ (and leaves no NaN in the JSON)
    assert "NaN" not in report.model_dump_json()
    assert report.kernel.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert report.estimates["kernel_ips"].effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    # Noise-free quadratic rewards and an unpenalized quadratic ridge: q̂ = E[r | x, a] exactly, so
    # DR = DM = mean over decisions and draws of the true expected reward at the target's draws.
    exact = float(np.mean(continuous_expected_reward(x[None, :], draws[:, :, 0])))
    assert report.reward_model.rmse < 1e-6
    assert report.estimates["kernel_dr"].value == pytest.approx(exact, abs=1e-6)
    assert report.estimates["dm"].value == pytest.approx(exact, abs=1e-6)
    assert report.headline == "kernel_dr" and report.action_kind == "continuous"
    assert [d.name for d in report.action_dimensions] == ["a"]
    assert report.action_dimensions[0].target_mean == pytest.approx(draws.mean())
    assert report.action_dimensions[0].logged_mean == pytest.approx(a.mean())


SLOPE_TARGET = 1.2


def test_negative_logged_value_normalizes_above_one_when_better() -> None:
    # Rewards are costs (logged value < 0); a target nearer the optimum must read > 1.
    frame = continuous_timelines(2000, seed=4)
    frame["reward"] = frame["reward"] - 5.0
    x = np.array([s["x"] for s in frame["state_features"]])
    draws = (1.5 * x)[None, :, None]
    report = evaluate_action_samples(frame, draws, "optimal", _small_config(), _spec(frame), ["a"])
    dr = report.headline_estimate
    assert report.logged_value < 0.0
    assert dr.normalized == pytest.approx(1.0 + (dr.value - report.logged_value) / abs(report.logged_value))
    assert dr.normalized > 1.0 and dr.reliable


def test_missing_continuous_columns_name_the_column_and_the_kind() -> None:
    frame = continuous_timelines(50, seed=0)
    draws = np.zeros((1, 50, 1))
    with pytest.raises(EvaluationError, match="continuous") as info:
        evaluate_action_samples(
            frame.drop(columns=["action_log_density"]), draws, "m", _small_config(), _spec(frame)
        )
    assert info.value.column == "action_log_density"
    bad = frame.copy()
    bad.at[7, "action_vector"] = [0.1, 0.2]
    with pytest.raises(EvaluationError, match="length is not 1") as info:
        evaluate_action_samples(bad, draws, "m", _small_config(), _spec(frame))
    assert info.value.column == "action_vector" and info.value.rows == ["c0-000007#1"]
    with pytest.raises(EvaluationError, match="target_samples must be finite"):
        evaluate_action_samples(frame, np.zeros((1, 49, 1)), "m", _small_config(), _spec(frame))


@pytest.fixture(scope="module")
def sac_version(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, str]:
    """A SAC model trained on uniformly logged decisions, exported and registered as `streamrl train` does."""
    root = tmp_path_factory.mktemp("sac")
    timelines = continuous_timelines(2000, seed=0)
    config = SacConfig(
        action_low=[ACTION_LOW],
        action_high=[ACTION_HIGH],
        gamma=0.0,
        hidden_sizes=[32, 32],
        batch_size=128,
        num_epochs=3,
        actor_learning_rate=3e-3,
        critic_learning_rate=3e-3,
    )
    registry = ModelRegistry(root / "registry")
    metadata = train_and_register(
        timelines,
        _spec(timelines),
        ["a"],
        config,
        registry,
        root / "tb",
        EpsilonGreedyExploration(epsilon=0.0),
    )
    return registry, metadata.version


def test_trained_sac_model_is_evaluated_and_gated_end_to_end(
    sac_version: tuple[ModelRegistry, str], tmp_path: Path
) -> None:
    registry, version = sac_version
    logged = continuous_timelines(4000, seed=11)
    # The truth: the served policy's own draws (the function serving samples from) on fresh contexts.
    policy = load_registered_policy(registry, version)
    fresh = np.random.default_rng(5).uniform(-1.0, 1.0, 100_000)
    actions = policy.act(fresh[:, None].astype(np.float32), np.random.default_rng(6))[0][:, 0]
    truth = float(np.mean(continuous_expected_reward(fresh, actions)))

    config = EvaluationConfig(bootstrap_samples=100, min_rows=1000)
    report, decision = evaluate_and_gate(
        logged, registry, version, config, _spec(logged), tmp_path / "reports"
    )
    assert report is not None
    dr = report.estimates["kernel_dr"]
    assert report.headline == "kernel_dr" and report.action_kind == "continuous"
    assert truth > report.logged_value + 0.5  # the trained policy is clearly better than uniform
    assert abs(dr.value - truth) < 0.05 * abs(truth), (dr.value, truth)
    assert dr.ci_low - 0.02 <= truth <= dr.ci_high + 0.02, (dr, truth)
    assert report.kernel is not None and 0 < report.kernel.effective_sample_size < 4000
    assert {"kernel_ips", "kernel_snips", "kernel_sequential_dr", "fqe"} <= set(report.estimates)
    assert decision.approved and decision.deployed and registry.deployed() == version
    assert load_report(tmp_path / "reports" / version) == report
    html = (tmp_path / "reports" / version / "report.html").read_text()
    assert "kernel-smoothed" in html and "Action dimensions" in html
