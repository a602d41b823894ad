"""`streamrl refresh`: the nightly step for a scheduler — train, evaluate, gate, deploy."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from infra.commands._common import add_environment_arguments, environment_from

HELP = "train, evaluate, gate and deploy a new model (nightly)"
DESCRIPTION = (
    "Fit the normalization spec, train a candidate on the timelines, evaluate it on what "
    "the deployed model logged, and deploy it if the gate approves. The candidate's algorithm is "
    "the environment file's `trainer:` section (any type: dqn, cql, sac, td3, linucb, "
    "linear_thompson, neural_bandit, parametric_dqn)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument("--train-days", type=float, default=7.0, help="train on the last N days of timelines")
    parser.add_argument("--eval-days", type=float, default=1.0, help="evaluate on the last N days")
    parser.add_argument(
        "--actions",
        default=None,
        help=(
            "comma-separated: action names in model order (discrete types) or action dimensions in "
            "action_vector order (sac, td3); parametric_dqn takes none. Default: read from the "
            "timelines' possible_actions"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from features import latest_spec
    from infra.refresh import run_refresh
    from stream import load_timelines
    from trainer import ModelRegistry

    env = environment_from(args)
    now = datetime.now(UTC)
    output_dir = env.stream_config().output_dir
    training = load_timelines(output_dir, start=now - timedelta(days=args.train_days))
    deployed = ModelRegistry(env.registry_dir).deployed()
    recent = load_timelines(output_dir, start=now - timedelta(days=args.eval_days))
    evaluation = recent[recent["model_version"] == deployed] if deployed else recent
    print(f"training on {len(training)} rows; evaluating on {len(evaluation)} rows logged by {deployed}")
    result = run_refresh(
        env,
        training,
        evaluation,
        None if args.actions is None else [a.strip() for a in args.actions.split(",") if a.strip()],
        env.config.demo.learned_exploration,
        label=now.strftime("%Y%m%dT%H%M%S"),
        previous_spec=latest_spec(env.specs_dir),
        progress=lambda line: print(line, flush=True),  # a scheduler's log shows each step as it starts
    )
    if result.spec_diff is not None and result.spec_diff.has_changes:
        print(f"normalization spec changed: {result.spec_diff.summary()}")
    print(f"spec {result.spec.version} -> {result.spec_path}")
    if result.feature_report is not None:
        print(f"feature report: {result.feature_report}")
    if result.report is not None:
        print(result.report.verdict)
    print(f"candidate {result.candidate.version}: {'deployed' if result.decision.approved else 'rejected'}")
    for reason in result.decision.reasons:
        print(f"  - {reason}")
    return 0
