"""Waits of a served loop (the demo, the served-loop benchmark): serving on a model version,
logged decisions in the timeline table. Each fails early with the log tail of a service that died.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx
import pandas as pd

from contracts import StreamrlError
from infra.environment import Environment
from infra.processes import ManagedProcess, ServiceError
from stream import load_timelines


def serves(url: str, version: str | None, canary: str | None = None) -> bool:
    """Serving answers `/healthz` naming `version` (None: no model loaded, which answers 503) and
    `canary` as its canary (None: no canary)."""
    try:
        response = httpx.get(f"{url}/healthz", timeout=2.0)
    except httpx.HTTPError:
        return False
    if response.status_code not in (200, 503):
        return False
    try:
        health = response.json()
    except ValueError:  # not serving's HealthStatus
        return False
    served_canary = (health.get("canary") or {}).get("model_version")
    return health.get("model_version") == version and served_canary == canary


def wait_serving(
    url: str,
    version: str | None,
    serving: ManagedProcess,
    timeout_s: float = 60.0,
    *,
    canary: str | None = None,
) -> None:
    """Serving follows the deploy pointer on its own; wait until it serves `version` (None: no model)
    and `canary` beside it (None: no canary)."""
    what = f"serving model {version or '(none)'}" + (f" with canary {canary}" if canary else "")
    serving.wait_ready(lambda: serves(url, version, canary), timeout_s, what)


def wait_for_timelines(
    env: Environment,
    request_ids: Iterable[str],
    since: pd.Timestamp,
    watched: list[ManagedProcess],
    timeout_s: float,
    *,
    what: str,
    error: type[StreamrlError],
) -> pd.DataFrame:
    """Poll the timeline table (rows from `since`) until every decision in `request_ids` is there,
    that is until the stream job has closed their MDPs; returns those rows.

    Raises `error` when a `watched` process dies (with its log tail) or after `timeout_s`, saying
    how many of the decisions of `what` (e.g. "day 3") arrived and which logs to read.
    """
    expected = set(request_ids)
    deadline = time.monotonic() + timeout_s
    have = 0
    while time.monotonic() < deadline:
        for process in watched:
            try:
                process.check_alive()
            except ServiceError as exc:
                raise error(str(exc)) from exc
        try:
            rows = load_timelines(env.stream_config().output_dir, start=since.to_pydatetime())
        except StreamrlError:
            rows = pd.DataFrame()
        if len(rows):
            have = len(expected.intersection(rows["request_id"]))
            if have == len(expected):
                return rows[rows["request_id"].isin(expected)].reset_index(drop=True)
        time.sleep(2.0)
    raise error(
        f"only {have} of {len(expected)} decisions of {what} reached the timelines within {timeout_s:.0f}s; "
        f"see {env.logs_dir / 'stream.log'} and {env.logs_dir / 'serving.log'}"
    )
