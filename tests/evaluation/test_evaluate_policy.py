"""evaluate_policy / evaluate_and_gate on a real registry and real onnxruntime models.

The models are hand-built linear ONNX graphs (see evaluation_data.py) so their true value under
the served ε-greedy exploration is computable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluation_data import (
    ANTI_WEIGHTS,
    LOGGING_WEIGHTS,
    OFFSET,
    ORACLE_WEIGHTS,
    register_linear_policy,
    true_value,
)

from evaluation import (
    EvaluationConfig,
    EvaluationError,
    GateConfig,
    evaluate_and_gate,
    evaluate_policy,
    load_report,
)
from features import NormalizationSpec
from trainer import ModelRegistry, OnnxPolicy, SoftmaxExploration

EPSILON = 0.1


def test_true_values_match_the_hand_computed_ones() -> None:
    """x1 ~ U(−1, 1); E[r] = (x1, −x1, 0.2) + 2; ε = 0.1, so uniform exploration earns 2 + 0.2/3.
    Oracle: greedy earns 2 + E[max(|x1|, 0.2)] = 2 + 0.2·0.2 + (1 − 0.04)/2 = 2.52
            → 0.9·2.52 + 0.1·2.0667 = 2.4747.
    Anti:   greedy takes the action paying −|x1|: 2 − E|x1| = 1.5 → 0.9·1.5 + 0.1·2.0667 = 1.5567."""
    uniform = OFFSET + 0.2 / 3
    assert true_value(ORACLE_WEIGHTS, EPSILON) == pytest.approx(0.9 * 2.52 + 0.1 * uniform, abs=3e-3)
    assert true_value(ANTI_WEIGHTS, EPSILON) == pytest.approx(0.9 * 1.5 + 0.1 * uniform, abs=3e-3)


def test_report_estimates_cover_the_true_value(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry
) -> None:
    version = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    report = evaluate_policy(
        bandit_timelines, OnnxPolicy.load(registry, version), EvaluationConfig(), bandit_spec
    )
    truth = true_value(ORACLE_WEIGHTS, EPSILON)
    for name in ("dr", "ips", "snips", "sequential_dr"):
        e = report.estimates[name]
        assert e.ci_low <= truth <= e.ci_high, (name, truth, e)
    dr = report.headline_estimate
    assert dr.normalized == pytest.approx(dr.value / report.logged_value)
    assert dr.normalized_ci_low > 1.1  # the oracle beats the logging policy clearly
    assert report.reward_model.r2 > 0.4
    assert report.reliable and report.logged_policy_versions == ["logging-v0"]
    assert report.n_decisions == report.n_episodes == 20_000
    assert "better than the logged policy with 95% confidence" in report.verdict


def test_approved_model_is_deployed_and_files_written(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    version = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    report, decision = evaluate_and_gate(
        bandit_timelines, registry, version, EvaluationConfig(), bandit_spec, tmp_path / "reports"
    )
    assert decision.approved and decision.deployed
    assert registry.deployed() == version
    assert "CPE gate approved" in registry.deployment_state().history[-1].reason
    assert load_report(tmp_path / "reports" / version) == report
    assert (tmp_path / "reports" / version / "gate.json").is_file()


def test_worse_model_is_rejected_and_not_deployed(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    version = register_linear_policy(registry, ANTI_WEIGHTS, EPSILON).version
    report, decision = evaluate_and_gate(
        bandit_timelines, registry, version, EvaluationConfig(), bandit_spec, tmp_path
    )
    truth = true_value(ANTI_WEIGHTS, EPSILON)
    assert report is not None and report.headline_estimate.ci_low <= truth <= report.headline_estimate.ci_high
    assert "worse than the logged policy" in report.verdict
    assert not decision.approved and not decision.deployed
    assert "below the threshold" in decision.reasons[0]
    assert registry.deployed() is None


def test_corrupt_model_is_rejected_not_deployed(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    version = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    onnx_path = registry.models_dir / version / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-40])  # truncated on disk
    report, decision = evaluate_and_gate(
        bandit_timelines, registry, version, EvaluationConfig(), bandit_spec, tmp_path
    )
    assert report is None
    assert not decision.approved
    assert "could not be loaded from the registry" in decision.reasons[0] and "sha256" in decision.reasons[0]
    assert registry.deployed() is None
    assert (tmp_path / version / "gate.json").is_file()


def test_tiny_data_is_unreliable_and_gated_out(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    version = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    config = EvaluationConfig(min_rows=1000, gate=GateConfig(threshold=0.0, min_effective_sample_size=0))
    report, decision = evaluate_and_gate(
        bandit_timelines.head(50), registry, version, config, bandit_spec, tmp_path
    )
    assert report is not None and not report.reliable
    assert "only 50 decisions, fewer than min_rows=1000" in report.warnings[0]
    assert "NOT reliable" in report.verdict
    assert not decision.approved and registry.deployed() is None


@pytest.fixture
def oracle(registry: ModelRegistry) -> OnnxPolicy:
    return OnnxPolicy.load(registry, register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version)


@pytest.mark.parametrize(
    ("propensity", "message"),
    [
        (0.0, "1 of 200 rows have a logged action_probability that is missing, ≤ 0 or > 1"),
        (1.5, "= \\[1.5\\]"),
        (np.nan, "= \\[nan\\]"),
    ],
)
def test_bad_propensities_raise(
    bandit_timelines: pd.DataFrame,
    bandit_spec: NormalizationSpec,
    oracle: OnnxPolicy,
    propensity: float,
    message: str,
) -> None:
    frame = bandit_timelines.head(200).copy()
    frame.loc[7, "action_probability"] = propensity
    with pytest.raises(EvaluationError, match=message) as info:
        evaluate_policy(frame, oracle, EvaluationConfig(), bandit_spec)
    assert info.value.column == "action_probability"
    assert info.value.rows == [f"{frame.loc[7, 'mdp_id']}#1"]


def test_empty_unknown_action_and_missing_column_raise(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, oracle: OnnxPolicy
) -> None:
    config = EvaluationConfig()
    with pytest.raises(EvaluationError, match="timelines are empty"):
        evaluate_policy(bandit_timelines.head(0), oracle, config, bandit_spec)
    frame = bandit_timelines.head(100).copy()
    frame.loc[3, "action"] = "teleport"
    with pytest.raises(EvaluationError, match=r"logged actions \['teleport'\] .* are not actions of model"):
        evaluate_policy(frame, oracle, config, bandit_spec)
    with pytest.raises(EvaluationError, match=r"timelines lack columns \['action_probability'\]"):
        evaluate_policy(bandit_timelines.drop(columns=["action_probability"]), oracle, config, bandit_spec)


def test_replaying_the_logging_policy_scores_one(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry
) -> None:
    # The served distribution equals the logger's, so every importance weight is 1.
    exploration = SoftmaxExploration(temperature=1.0)
    version = register_linear_policy(registry, LOGGING_WEIGHTS, 0.0, exploration).version
    report = evaluate_policy(
        bandit_timelines, OnnxPolicy.load(registry, version), EvaluationConfig(), bandit_spec
    )
    assert report.estimates["ips"].normalized == pytest.approx(1.0, abs=1e-6)
    assert report.estimates["ips"].max_weight == pytest.approx(1.0, abs=1e-6)
    assert report.estimates["dr"].effective_sample_size == pytest.approx(20_000, rel=1e-6)
    dr = report.headline_estimate
    assert dr.normalized_ci_low < 1.0 < dr.normalized_ci_high
    assert "cannot tell it apart from the logged policy" in report.verdict


def test_report_has_every_estimator_html_and_tensorboard(
    bandit_timelines: pd.DataFrame, bandit_spec: NormalizationSpec, registry: ModelRegistry, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    version = register_linear_policy(registry, ORACLE_WEIGHTS, EPSILON).version
    report, decision = evaluate_and_gate(
        bandit_timelines.head(5_000),
        registry,
        version,
        EvaluationConfig(),
        bandit_spec,
        tmp_path / "reports",
        tensorboard_dir=tmp_path / "tb",
    )
    assert report is not None
    assert set(report.estimates) == {
        "dm", "ips", "snips", "dr", "sndr", "switch_dr", "pdis", "sequential_dr", "wdr", "magic", "fqe"
    }  # fmt: skip
    assert report.fqe is not None and report.fqe.iterations == 1  # one-step episodes
    shares = {a.action: a for a in report.actions}
    assert shares["stay"].logged_share == pytest.approx(0.6, abs=0.03)
    assert sum(a.target_share for a in report.actions) == pytest.approx(1.0)
    assert report.weight_histogram is not None and sum(report.weight_histogram.counts) > 0
    page = (tmp_path / "reports" / version / "report.html").read_text()
    assert decision.summary in page and page.count("data:image/png;base64,") == 3
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"cpe/dr/normalized", "cpe/magic/value", "cpe/logged_value"} <= set(events.Tags()["scalars"])
    assert events.Scalars("cpe/dr/value")[0].value == pytest.approx(report.estimates["dr"].value, rel=1e-6)
