"""`streamrl train --config run.yaml`: one training run → a registered (not deployed) model.

Multi-process: `torchrun --nproc-per-node 2 -m infra.cli train --config run.yaml` runs the same
command in every process; see docs/training.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train one run from its YAML and register the model (not deployed)"
DESCRIPTION = (
    "Train on timelines as the run file says, export to ONNX and register the model "
    "(the evaluation gate decides about deploying). Resumes from the newest checkpoint if configured."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="run YAML (see trainer/run_config.py)")
    parser.add_argument(
        "--app",
        default=None,
        metavar="MANIFEST|NAME",
        help="train on this app's timelines and register into its registry (overrides the run file's "
        "data.output_dir, output.registry_dir and output.log_dir)",
    )
    parser.add_argument(
        "--environment", type=Path, default=None, metavar="FILE", help="environment YAML for --app"
    )


def run(args: argparse.Namespace) -> int:
    from trainer import load_run_config, run_training

    config = load_run_config(args.config)
    if args.app is not None:
        config = _for_app(config, args.app, args.environment)
    metadata = run_training(config)
    if metadata is not None:  # rank 0, or the only process
        print(f"registered {metadata.algorithm} model {metadata.version} in {config.output.registry_dir}")
        # Each family writes its own final metrics (TD/MC loss for DQN, reward error for bandits, ...);
        # per-action ones (`train/q_mean/<action>`) stay in TensorBoard.
        shown = sorted((k, v) for k, v in metadata.training_metrics.items() if k.count("/") == 1)
        if shown:
            print("  " + ", ".join(f"{name}={value:.4g}" for name, value in shown))
    return 0


def _for_app(config, app: str, environment: Path | None):  # TrainRunConfig -> TrainRunConfig
    from infra.apps import resolve_app
    from infra.config import load_config
    from infra.environment import Environment

    base = load_config(environment)
    env = Environment.for_app(base, resolve_app(app, base))
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"output_dir": env.stream_config().output_dir}),
            "output": config.output.model_copy(
                update={"registry_dir": env.registry_dir, "log_dir": env.tensorboard_dir / config.name}
            ),
        }
    )
