"""evaluation stage: counterfactual policy evaluation (DM, IPS, SNIPS, DR, sequential DR) with
bootstrap intervals, a cross-fitted reward model, the CPE report and the deploy gate.

Entry points: `evaluate_policy` (timelines + model → `CpeReport`), `gate_model` (report →
`GateDecision`) and `evaluate_and_gate` (registry version → report, decision, deploy).
"""

from evaluation.config import EvaluationConfig, GateConfig
from evaluation.errors import EvaluationError, ReportError
from evaluation.estimators import (
    Estimate,
    direct_method,
    doubly_robust,
    ips,
    one_step_estimates,
    sequential_doubly_robust,
    snips,
)
from evaluation.evaluate import evaluate_policy
from evaluation.gate import GateDecision, evaluate_and_gate, gate_model
from evaluation.report import CpeReport, load_report, save_report
from evaluation.reward_model import (
    CrossFitResult,
    RewardModelFit,
    RidgeRewardModelConfig,
    cross_fit_reward_model,
)

__all__ = [
    "CpeReport",
    "CrossFitResult",
    "Estimate",
    "EvaluationConfig",
    "EvaluationError",
    "GateConfig",
    "GateDecision",
    "ReportError",
    "RewardModelFit",
    "RidgeRewardModelConfig",
    "cross_fit_reward_model",
    "direct_method",
    "doubly_robust",
    "evaluate_and_gate",
    "evaluate_policy",
    "gate_model",
    "ips",
    "load_report",
    "one_step_estimates",
    "save_report",
    "sequential_doubly_robust",
    "snips",
]
