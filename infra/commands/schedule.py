"""`streamrl schedule`: one app's refresh scheduler, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from infra.commands._common import add_environment_arguments, environment_from

HELP = "refresh an app whenever its manifest's `refresh:` says (until SIGTERM)"
DESCRIPTION = (
    "Poll every few seconds whether the app's refresh is due (its daily UTC time passed, or "
    "`every_new_rows` timeline rows arrived since the last one) and run it: train the candidate(s), "
    "evaluate, gate, deploy the best approved. Failures are logged, written to reports/alerts.jsonl "
    "and retried after `retry_backoff_s`; the deployed model keeps serving. State: "
    "<run_dir>/scheduler/state.json. Needs --app."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    parser.add_argument(
        "--poll-interval-s",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to check whether a refresh is due (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    from infra.scheduler import RefreshScheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = environment_from(args)
    scheduler = RefreshScheduler(env, poll_interval_s=args.poll_interval_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"scheduler of app {env.app} running: state {scheduler.path}, refresh "
        f"{scheduler.spec.model_dump(mode='json')}",
        flush=True,
    )
    scheduler.run(stop)
    print(f"scheduler of app {env.app} stopped", flush=True)
    return 0
