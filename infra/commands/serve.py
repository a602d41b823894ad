"""`streamrl serve`: the HTTP action service for the environment's registry and stack."""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from infra.commands._common import add_environment_arguments, environment_from

HELP = "run the HTTP action service (until SIGTERM)"
DESCRIPTION = "Serve actions over HTTP (POST /v1/act) with the deployed model, until SIGTERM/SIGINT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    from serving import run_server

    config = environment_from(args).serving_config()
    # uvicorn stops gracefully on SIGTERM/SIGINT (each worker's lifespan flushes its decision log),
    # then re-raises the signal to the handler installed before it: this one makes a stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    run_server(config)  # `serving.workers` processes on the port
    return 0
