"""evaluation stage: counterfactual policy evaluation with bootstrap intervals that refit the
models, a cross-fitted reward model and fitted Q evaluation, t-test and empirical-Bernstein lower
bounds, the CPE report (JSON, HTML, TensorBoard) with a headline chosen for the problem, and the
deploy gate.

Estimators — one-step: DM, IPS, SNIPS, DR, SNDR, switch-DR; sequential: PDIS, sequential DR,
WDR, MAGIC; model-based: FQE; for continuous actions the same on kernel-smoothed weights
(Kallus & Zhou 2018). Every action kind goes through one adapter in `evaluation.kinds`.
Entry points: `evaluate_policy` (timelines + served model of any kind → `CpeReport`), the
model-free `evaluate_probabilities` (discrete), `evaluate_candidate_probabilities` (parametric)
and `evaluate_action_samples` (continuous), `gate_model` (report → `GateDecision`),
`evaluate_and_gate` (registry version → report, decision, deploy), `hold_out_mdps` (keep
evaluation MDPs out of training) and `check_data_health` (logged-data health against
`HealthThresholds` → `DataHealth`, carried by the report; a failed blocking check rejects at the gate).
"""

from evaluation.bounds import BoundMethod, HighConfidenceBound, high_confidence_bounds
from evaluation.canary import CanaryVerdict, compare_canary, judge_canary
from evaluation.config import CanaryConfig, EvaluationConfig, GateConfig
from evaluation.errors import EvaluationError, ReportError
from evaluation.estimators import (
    ONE_STEP_ESTIMATORS,
    Estimate,
    direct_method,
    doubly_robust,
    ips,
    one_step_estimates,
    self_normalized_doubly_robust,
    snips,
    switch_doubly_robust,
)
from evaluation.evaluate import (
    evaluate_action_samples,
    evaluate_candidate_probabilities,
    evaluate_policy,
    evaluate_probabilities,
)
from evaluation.fqe import FqeFit, FqeResult, RidgeFqeConfig, fitted_q_evaluation
from evaluation.gate import GateAlert, GateDecision, evaluate_and_gate, gate_model, record_alerts
from evaluation.health import (
    DataHealth,
    HealthCheck,
    HealthCheckKind,
    HealthThresholds,
    TargetOverlap,
    check_data_health,
)
from evaluation.html_report import render_html, save_html_report, write_tensorboard_scalars
from evaluation.kernel import KernelConfig, KernelSmoothing, kernel_weights, silverman_bandwidth
from evaluation.report import (
    ActionDimensionSummary,
    ActionSummary,
    CpeReport,
    WeightHistogram,
    load_report,
    save_report,
)
from evaluation.reward_model import (
    CrossFitResult,
    RewardModelFit,
    RidgeRewardModelConfig,
    cross_fit_reward_model,
)
from evaluation.sequential import SEQUENTIAL_ESTIMATORS, sequential_doubly_robust, sequential_estimates
from evaluation.split import held_out_mask, hold_out_mdps

__all__ = [
    "ONE_STEP_ESTIMATORS",
    "SEQUENTIAL_ESTIMATORS",
    "ActionDimensionSummary",
    "ActionSummary",
    "BoundMethod",
    "CpeReport",
    "CrossFitResult",
    "DataHealth",
    "Estimate",
    "CanaryConfig",
    "CanaryVerdict",
    "EvaluationConfig",
    "EvaluationError",
    "FqeFit",
    "FqeResult",
    "GateAlert",
    "GateConfig",
    "GateDecision",
    "HealthCheck",
    "HealthCheckKind",
    "HealthThresholds",
    "HighConfidenceBound",
    "KernelConfig",
    "KernelSmoothing",
    "ReportError",
    "RewardModelFit",
    "RidgeFqeConfig",
    "RidgeRewardModelConfig",
    "TargetOverlap",
    "WeightHistogram",
    "check_data_health",
    "cross_fit_reward_model",
    "direct_method",
    "doubly_robust",
    "evaluate_action_samples",
    "compare_canary",
    "evaluate_and_gate",
    "judge_canary",
    "evaluate_candidate_probabilities",
    "evaluate_policy",
    "evaluate_probabilities",
    "fitted_q_evaluation",
    "gate_model",
    "held_out_mask",
    "high_confidence_bounds",
    "hold_out_mdps",
    "ips",
    "kernel_weights",
    "load_report",
    "one_step_estimates",
    "record_alerts",
    "render_html",
    "save_html_report",
    "save_report",
    "self_normalized_doubly_robust",
    "sequential_doubly_robust",
    "sequential_estimates",
    "silverman_bandwidth",
    "snips",
    "switch_doubly_robust",
    "write_tensorboard_scalars",
]
