"""`streamrl refresh`: one refresh now — train, evaluate, gate, deploy (`streamrl schedule` runs it on time)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from infra.commands._common import add_environment_arguments, environment_from

HELP = "train, evaluate, gate and deploy a new model (nightly)"
DESCRIPTION = (
    "Fit the normalization spec, train a candidate on the timelines, evaluate it on what "
    "the deployed model logged, and deploy it if the gate approves. The candidate's algorithm is "
    "the environment file's `trainer:` section (any type: dqn, cql, sac, td3, linucb, "
    "linear_thompson, neural_bandit, parametric_dqn), or with --app the manifest's `trainer:`; a "
    "manifest's `candidates:` grid trains each, evaluates each at a Bonferroni-corrected confidence "
    "and deploys the best approved one."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument(
        "--train-days",
        type=float,
        default=None,
        help="train on the last N days of timelines (default: the app's refresh.train_days, else 7)",
    )
    parser.add_argument(
        "--eval-days",
        type=float,
        default=None,
        help="evaluate on the deployed model's rows of the last N days (default: all within --train-days)",
    )
    parser.add_argument(
        "--wait-for-rows",
        type=int,
        default=None,
        metavar="N",
        help="first wait (up to --wait-s) until the timelines hold at least N rows: the stream job closes "
        "each episode an attribution window plus the idle timeout after its last decision",
    )
    parser.add_argument(
        "--wait-s", type=float, default=300.0, help="how long --wait-for-rows waits (default 300)"
    )
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
    from infra.refresh import refresh_inputs, run_refresh

    env = environment_from(args)
    if args.wait_for_rows is not None:
        _wait_for_rows(env, args.wait_for_rows, args.wait_s)
    now = datetime.now(UTC)
    train_days = args.train_days
    if train_days is None:
        train_days = env.manifest.refresh.train_days if env.manifest is not None else 7.0
    inputs = refresh_inputs(env, now, train_days=train_days, eval_days=args.eval_days)
    print(
        f"training on {len(inputs.training_rows)} rows; evaluating on {len(inputs.evaluation_rows)} rows "
        f"logged by {inputs.logging_policy}"
    )
    if len(inputs.configs) > 1:
        print(f"candidate grid: {len(inputs.configs)} configs of {inputs.configs[0].type}")
    result = run_refresh(
        env,
        inputs.training_rows,
        inputs.evaluation_rows,
        None if args.actions is None else [a.strip() for a in args.actions.split(",") if a.strip()],
        inputs.exploration,
        label=now.strftime("%Y%m%dT%H%M%S"),
        previous_spec=inputs.previous_spec,
        previous_report=inputs.previous_report,  # the deployed model's: the gate's swing check
        progress=lambda line: print(line, flush=True),  # a scheduler's log shows each step as it starts
        configs=inputs.configs,
    )
    if result.spec_diff is not None and result.spec_diff.has_changes:
        print(f"normalization spec changed: {result.spec_diff.summary()}")
    print(f"spec {result.spec.version} -> {result.spec_path}")
    if result.feature_report is not None:
        print(f"feature report: {result.feature_report}")
    for candidate in result.candidates:
        if candidate.report is not None:
            print(candidate.report.verdict)
        outcome = "deployed" if candidate.decision.deployed else "rejected"
        if candidate.decision.approved and not candidate.decision.deployed:
            outcome = "approved, not deployed"
        print(f"candidate {candidate.model.version}: {outcome}")
        for reason in candidate.decision.reasons:
            print(f"  - {reason}")
    if result.selection:
        print(result.selection)
    return 0


def _wait_for_rows(env, wanted: int, timeout_s: float) -> None:  # env: infra.environment.Environment
    import time

    from infra.refresh import RefreshError
    from infra.scheduler import TimelineRowCounter

    counter = TimelineRowCounter(env.stream_config().output_dir)
    deadline = time.monotonic() + timeout_s
    while (have := counter.count()) < wanted:
        if time.monotonic() > deadline:
            raise RefreshError(
                f"only {have} of {wanted} timeline rows arrived within {timeout_s:.0f}s; is the timeline job "
                f"running (`streamrl status{' --app ' + env.app if env.app else ''}`)? Its log: "
                f"{env.logs_dir / 'stream.log'}"
            )
        time.sleep(1.0)
    print(f"{have} timeline rows", flush=True)
