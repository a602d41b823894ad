"""Apps on the local stack: `streamrl up` starts each app's always-on loop, `down` stops exactly
that, `status` reports on it.

Per app, `up` starts five detached processes, each an ordinary `streamrl` command with `--app`:
serving (`serve`), the timeline job (`stream`), feature ingest (`features ingest`), the monitor
(`monitor --worker`, unless the manifest disables it) and the refresh scheduler (`schedule`).
One process per component and per app: a Spark JVM, an HTTP server and a faust worker do not
share an interpreter, a crash or a slow model load in one app never touches another's latency,
and each can be restarted alone. What `up` started is recorded in `<apps_dir>/<app>/processes.json`
(PID, command line, log) next to the app's resolved manifest (`manifest.yaml`, ports filled in),
which is also what `--app NAME` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from contracts import StreamrlError
from infra.config import StreamrlConfig
from infra.environment import Environment
from infra.manifest import AppManifest, ManifestError, check_distinct, load_manifest
from infra.processes import start_process

Progress = Callable[[str], None]
MANIFEST_FILE = "manifest.yaml"
PROCESSES_FILE = "processes.json"
STACK_MARKER = ".stack_started_by_up"
COMPONENTS = ("serving", "stream", "ingest", "monitor", "scheduler")
_COMMANDS: dict[str, list[str]] = {
    "serving": ["serve"],
    "stream": ["stream"],
    "ingest": ["features", "ingest"],
    "monitor": ["monitor", "--worker"],
    "scheduler": ["schedule"],
}


class AppsError(StreamrlError):
    """An app cannot be started, found or stopped as asked."""


# --- finding an app ----------------------------------------------------------------------------
def app_dir(config: StreamrlConfig, name: str) -> Path:
    return (config.apps_dir / name).resolve()


def known_apps(config: StreamrlConfig) -> list[str]:
    """Apps `up` has recorded under the apps folder (running or not)."""
    root = config.apps_dir.resolve()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_FILE}"))


def resolve_app(ref: str, config: StreamrlConfig) -> AppManifest:
    """`--app`: a manifest file, or the name of an app `up` recorded (its resolved manifest)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_manifest(path)
    recorded = app_dir(config, ref) / MANIFEST_FILE
    if not recorded.is_file():
        known = known_apps(config)
        raise AppsError(
            f"--app {ref!r}: no manifest file of that name, and no app {ref!r} under {config.apps_dir.resolve()} "
            f"(apps `streamrl up` started: {known or 'none'}); pass the manifest's path"
        )
    return load_manifest(recorded)


# --- what up started ---------------------------------------------------------------------------
class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartedProcess(_Record):
    component: str
    pid: int
    argv: list[str]
    log_path: Path
    started_at: datetime


class AppProcesses(_Record):
    """`<apps_dir>/<app>/processes.json`: what `up` started for one app."""

    schema_version: int = 1
    app: str
    config_path: Path | None
    processes: list[StartedProcess]


def _read_processes(directory: Path) -> AppProcesses | None:
    path = directory / PROCESSES_FILE
    if not path.is_file():
        return None
    return AppProcesses.model_validate_json(path.read_text())


def _is_ours(process: StartedProcess) -> bool:
    """The PID still runs the command we started (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)
        return False
    args = [a.decode(errors="replace") for a in cmdline if a]
    return args[-len(process.argv) :] == process.argv


def _stop(process: StartedProcess, timeout_s: float = 30.0) -> bool:
    if not _is_ours(process):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_ours(process):
        time.sleep(0.1)
    if _is_ours(process):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return True


# --- up ----------------------------------------------------------------------------------------
@dataclass
class UpResult:
    apps: list[str]
    started: dict[str, list[str]] = field(default_factory=dict)  # app -> components started
    urls: dict[str, str] = field(default_factory=dict)


def load_manifests(paths: Sequence[Path]) -> list[tuple[Path, AppManifest]]:
    """Validate every manifest before anything starts (names and ports must not collide)."""
    if not paths:
        raise AppsError("streamrl up needs at least one manifest (streamrl init NAME writes one)")
    manifests = [(Path(p), load_manifest(Path(p))) for p in paths]
    check_distinct(manifests)
    return manifests


def _assign_ports(config: StreamrlConfig, manifests: list[AppManifest]) -> list[AppManifest]:
    """Ports the manifests leave unset: the first free ones above the environment's, in order,
    keeping what a running app already has (its recorded manifest)."""
    taken_serving = {m.serving.port for m in manifests if m.serving.port is not None}
    taken_monitor = {m.monitoring.web_port for m in manifests if m.monitoring.web_port is not None}
    resolved = []
    for manifest in manifests:
        recorded_path = app_dir(config, manifest.app) / MANIFEST_FILE
        recorded = load_manifest(recorded_path) if recorded_path.is_file() else None
        serving_port = manifest.serving.port
        if serving_port is None:
            serving_port = recorded.serving.port if recorded is not None else None
            if serving_port is None or serving_port in taken_serving:
                serving_port = _next_free(config.serving.port + 1, taken_serving)
            taken_serving.add(serving_port)
        web_port = manifest.monitoring.web_port
        if web_port is None:
            web_port = recorded.monitoring.web_port if recorded is not None else None
            if web_port is None or web_port in taken_monitor:
                web_port = _next_free(config.monitoring.web_port + 1, taken_monitor)
            taken_monitor.add(web_port)
        resolved.append(
            manifest.model_copy(
                update={
                    "serving": manifest.serving.model_copy(update={"port": serving_port}),
                    "monitoring": manifest.monitoring.model_copy(update={"web_port": web_port}),
                }
            )
        )
    return resolved


def _next_free(start: int, taken: set[int]) -> int:
    port = start
    while port in taken:
        port += 1
    return port


def check_change(config: StreamrlConfig, manifest: AppManifest, path: Path, acknowledged: bool) -> None:
    """A running app's action space or forced feature types may change only when acknowledged:
    its served models and published specs depend on them (the normalization-spec rule)."""
    recorded_path = app_dir(config, manifest.app) / MANIFEST_FILE
    if not recorded_path.is_file() or acknowledged:
        return
    changes = manifest.incompatible_change(load_manifest(recorded_path))
    if changes:
        raise ManifestError(
            f"{path}: app {manifest.app!r} runs (or last ran) with another contract: {'; '.join(changes)}. "
            "Its served model and normalization specs depend on it; rerun with --acknowledge-change to "
            "accept (the next refresh trains on the new contract), or revert the manifest",
            path=path,
            key="actions" if any(c.startswith("actions") for c in changes) else "features",
        )


def up(
    paths: Sequence[Path],
    config: StreamrlConfig,
    *,
    config_path: Path | None = None,
    acknowledge_change: bool = False,
    ready_timeout_s: float = 180.0,
    progress: Progress = print,
) -> UpResult:
    """Start the stack (if down) and each app's loop; an app already running is restarted only if
    its manifest changed. Every manifest is validated before anything starts."""
    from infra.loop_waits import serves
    from infra.stack import LocalStack
    from stream import ensure_topics

    loaded = load_manifests(paths)
    for path, manifest in loaded:
        check_change(config, manifest, path, acknowledge_change)
    manifests = _assign_ports(config, [m for _, m in loaded])

    stack = LocalStack(config.stack)
    if not all(s.healthy for s in stack.status()):
        progress(f"[stack] starting: broker {stack.bootstrap_servers}, redis {stack.redis_url}")
        stack.up()
        config.apps_dir.mkdir(parents=True, exist_ok=True)
        (config.apps_dir / STACK_MARKER).write_text(datetime.now(UTC).isoformat())
    else:
        progress(f"[stack] already running: broker {stack.bootstrap_servers}, redis {stack.redis_url}")

    result = UpResult(apps=[m.app for m in manifests])
    for manifest in manifests:
        env = Environment.for_app(config, manifest)
        directory = app_dir(config, manifest.app)
        directory.mkdir(parents=True, exist_ok=True)
        result.urls[manifest.app] = f"{env.serving_url}/v1/apps/{manifest.app}"
        recorded = directory / MANIFEST_FILE
        running = _read_processes(directory)
        alive = [p for p in running.processes if _is_ours(p)] if running is not None else []
        unchanged = recorded.is_file() and load_manifest(recorded) == manifest
        if alive and unchanged and len(alive) == len(running.processes):
            progress(f"[{manifest.app}] already running ({len(alive)} processes), manifest unchanged")
            result.started[manifest.app] = []
            continue
        if alive:
            progress(f"[{manifest.app}] restarting: the manifest changed or a component had stopped")
            for process in reversed(alive):
                _stop(process)
        recorded.write_text(_manifest_yaml(manifest))
        ensure_topics(env.bootstrap_servers, env.config.topics, security=env.kafka_security)
        from features import build_feature_store

        build_feature_store(env.feature_store_config())
        started = _start_components(env, config_path, directory)
        result.started[manifest.app] = [p.component for p in started]
        progress(
            f"[{manifest.app}] started {', '.join(p.component for p in started)}; logs in {env.logs_dir}"
        )
        serving = next(p for p in started if p.component == "serving")
        deadline = time.monotonic() + ready_timeout_s
        from trainer import ModelRegistry

        expected = ModelRegistry(env.registry_dir).deployed() or getattr(
            env.config.serving.fallback, "model_version", None
        )
        while not serves(env.serving_url, expected):
            if not _is_ours(serving) or time.monotonic() > deadline:
                raise AppsError(
                    f"[{manifest.app}] serving did not answer /healthz on {env.serving_url} within "
                    f"{ready_timeout_s:.0f}s; see {serving.log_path}"
                )
            time.sleep(0.5)
        progress(
            f"[{manifest.app}] serving {expected or '(no model: 503 until the first deploy)'} at {result.urls[manifest.app]}"
        )
    return result


def _start_components(env: Environment, config_path: Path | None, directory: Path) -> list[StartedProcess]:
    manifest = env.manifest
    assert manifest is not None
    common = ["--app", manifest.app, *(["--config", str(config_path.resolve())] if config_path else [])]
    started: list[StartedProcess] = []
    for component in COMPONENTS:
        if component == "monitor" and not manifest.monitoring.enabled:
            continue
        argv = ["-m", "infra.cli", *_COMMANDS[component], *common]
        log_path = env.logs_dir / f"{component}.log"
        process = start_process(f"{manifest.app}-{component}", argv, log_path, cwd=Path.cwd())
        started.append(
            StartedProcess(
                component=component,
                pid=process.popen.pid,
                argv=argv,
                log_path=log_path,
                started_at=datetime.now(UTC),
            )
        )
    record = AppProcesses(app=manifest.app, config_path=config_path, processes=started)
    (directory / PROCESSES_FILE).write_text(record.model_dump_json(indent=2))
    return started


def _manifest_yaml(manifest: AppManifest) -> str:
    header = (
        "# Written by `streamrl up`: the manifest this app runs with, ports filled in. Edit the original.\n"
    )
    return header + yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=False), sort_keys=False)


# --- down --------------------------------------------------------------------------------------
def down(config: StreamrlConfig, apps: Sequence[str] | None = None, progress: Progress = print) -> list[str]:
    """Stop what `up` started for `apps` (default: every app), and the stack if `up` started it and
    no app is left running. Returns "app/component" for each process stopped."""
    from infra.stack import LocalStack

    names = list(apps) if apps else known_apps(config)
    unknown = sorted(set(names) - set(known_apps(config)))
    if unknown:
        raise AppsError(f"no app {unknown} under {config.apps_dir.resolve()}; known: {known_apps(config)}")
    stopped = []
    for name in names:
        directory = app_dir(config, name)
        record = _read_processes(directory)
        if record is None:
            continue
        for process in reversed(record.processes):
            if _stop(process):
                stopped.append(f"{name}/{process.component}")
        (directory / PROCESSES_FILE).unlink()
        progress(f"[{name}] stopped")
    still_running = [n for n in known_apps(config) if _read_processes(app_dir(config, n)) is not None]
    marker = config.apps_dir / STACK_MARKER
    if not still_running and marker.exists():
        LocalStack(config.stack).down()
        marker.unlink()
        progress("[stack] stopped (streamrl up had started it)")
    return stopped


# --- status ------------------------------------------------------------------------------------
@dataclass
class AppStatus:
    app: str
    url: str
    components: dict[str, str]  # component -> "running" | "stopped" | "not started" (+ health)
    deployed: str | None
    deployed_since: datetime | None
    last_refresh: str
    next_refresh: str
    timeline_rows: int
    newest_row_age_s: float | None  # since the timeline job last committed a file
    stream_lag_events: int | None
    dead_letters_last_hour: dict[str, int] | None  # None: the broker did not answer
    data_health: str  # the logged-data checks of the last refresh's evaluation


def status(config: StreamrlConfig, apps: Sequence[str] | None = None) -> list[AppStatus]:
    """Per app: each component's health, the deployed model, the last and next refresh, stream lag
    and freshness, and the dead letters of the last hour."""
    names = list(apps) if apps else known_apps(config)
    return [_app_status(config, name) for name in names]


def _app_status(config: StreamrlConfig, name: str) -> AppStatus:
    from trainer import ModelRegistry

    env = Environment.for_app(config, resolve_app(name, config))
    record = _read_processes(app_dir(config, name))
    components: dict[str, str] = {}
    for component in COMPONENTS:
        process = next((p for p in record.processes if p.component == component), None) if record else None
        if process is None:
            components[component] = "not started"
        else:
            components[component] = f"running (pid {process.pid})" if _is_ours(process) else "STOPPED"
    if components["serving"].startswith("running"):
        components["serving"] += " " + _health(env.serving_url)
    state = ModelRegistry(env.registry_dir).deployment_state()
    since = state.history[-1].at if state.current and state.history else None
    last, nxt = _refresh_summary(env)
    rows, age = _freshness(env)
    # Without a broker, Kafka clients retry for a minute before giving up: ask the port first.
    broker_up = _broker_answers(env)
    return AppStatus(
        app=name,
        url=f"{env.serving_url}/v1/apps/{name}",
        components=components,
        deployed=state.current,
        deployed_since=since,
        last_refresh=last,
        next_refresh=nxt,
        timeline_rows=rows,
        newest_row_age_s=age,
        stream_lag_events=_stream_lag(env) if broker_up else None,
        dead_letters_last_hour=_dead_letters(env, timedelta(hours=1)) if broker_up else None,
        data_health=_data_health(env),
    )


def _health(url: str) -> str:
    import httpx

    try:
        body = httpx.get(f"{url}/healthz", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return "(not answering /healthz)"
    reasons = f": {'; '.join(body.get('degraded_reasons') or [])}" if body.get("degraded_reasons") else ""
    return f"({body.get('status')}{reasons})"


def _refresh_summary(env: Environment) -> tuple[str, str]:
    """The scheduler's last refresh (when, why, outcome, reasons) and its next turn."""
    from infra.scheduler import read_scheduler_state

    state = read_scheduler_state(env.run_dir)
    if state is None:
        return "none yet", "the scheduler has not reported yet"
    last = state.last_refresh
    if last is None:
        described = "none yet"
    else:
        chosen = f" {last.chosen_version}" if last.chosen_version else ""
        why = last.error or "; ".join(last.reasons[:2])
        described = (
            f"{last.finished_at:%Y-%m-%d %H:%M:%S} UTC ({last.trigger.value}, attempt {last.attempt}): "
            f"{last.outcome.value}{chosen}" + (f" — {why}" if why else "")
        )
    turns = []
    if state.retry_at is not None:
        turns.append(f"retry at {state.retry_at:%Y-%m-%d %H:%M:%S} UTC")
    if state.next_daily_at is not None:
        turns.append(f"daily at {state.next_daily_at:%Y-%m-%d %H:%M} UTC")
    if state.rows.every_new_rows is not None:
        turns.append(f"after {state.rows.rows_since_last}/{state.rows.every_new_rows} new rows")
    phase = f"[{state.phase.value}, seen {(datetime.now(UTC) - state.updated_at).total_seconds():.0f} s ago] "
    return described, phase + (", or ".join(turns) or "none scheduled")


def _data_health(env: Environment) -> str:
    """The logged-data health of the last refresh (its first candidate's CPE report)."""
    from evaluation.report import load_report
    from infra.scheduler import read_scheduler_state

    state = read_scheduler_state(env.run_dir)
    versions = state.last_refresh.candidate_versions if state and state.last_refresh else []
    path = env.reports_dir / versions[0] / "cpe_report.json" if versions else None
    if path is None or not path.is_file():
        return "not checked yet (no refresh has evaluated a candidate)"
    health = load_report(path).data_health
    if health is None:
        return "not recorded in the last report"
    if health.passed:
        off = f"; {len(health.warnings)} diagnostic(s) off" if health.warnings else ""
        return f"passed {len(health.checks)} checks on {health.n_decisions} decisions{off}"
    return "BLOCKING: " + "; ".join(check.detail for check in health.failures)


def _freshness(env: Environment) -> tuple[int, float | None]:
    """Timeline rows, and how long ago the timeline job last committed a file."""
    from infra.scheduler import TimelineRowCounter

    counter = TimelineRowCounter(env.stream_config().output_dir)
    rows = counter.count()
    if not counter.files:
        return 0, None
    newest = max(path.stat().st_mtime for path in counter.files)
    return rows, time.time() - newest


def _broker_answers(env: Environment, timeout_s: float = 1.0) -> bool:
    """Whether any bootstrap server accepts a TCP connection within `timeout_s`."""
    import socket

    for server in env.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
            return True
    return False


def _stream_lag(env: Environment) -> int | None:
    """Events on the app's topics the timeline job has not read yet: fetch high watermarks minus
    the offsets of its last committed batch (from the Spark checkpoint)."""
    offsets_dir = env.stream_config().checkpoint_dir / "offsets"
    batches = (
        sorted((int(p.name) for p in offsets_dir.glob("[0-9]*")), reverse=True)
        if offsets_dir.is_dir()
        else []
    )
    committed: dict[str, int] = {}
    if batches:
        lines = (offsets_dir / str(batches[0])).read_text().splitlines()
        with contextlib.suppress(ValueError, IndexError):
            committed = json.loads(lines[-1]).get("partitions", {})
    ends = _high_watermarks(env, [env.config.topics.decisions, env.config.topics.rewards])
    if ends is None:
        return None
    return sum(max(end - committed.get(key, 0), 0) for key, end in ends.items())


def _high_watermarks(env: Environment, topics: list[str], timeout_s: float = 5.0) -> dict[str, int] | None:
    """`topic:partition` → end offset, from fetch responses (the local broker's ListOffsets is wrong)."""
    from kafka import KafkaConsumer, TopicPartition

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=env.bootstrap_servers,
            enable_auto_commit=False,
            consumer_timeout_ms=500,
            **env.kafka_security.client_settings("kafka_python"),
        )
    except Exception:  # noqa: BLE001 - the broker is down: lag unknown
        return None
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not tps:
            return {}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100, max_records=1)
        if any(consumer.highwater(tp) is None for tp in tps):
            return None
        return {f"{tp.topic}:{tp.partition}": int(consumer.highwater(tp)) for tp in tps}
    finally:
        consumer.close()


def _dead_letters(env: Environment, window: timedelta, limit: int = 100_000) -> dict[str, int]:
    """Dead letters received in the last `window`, counted by reason (first 80 characters)."""
    from kafka import KafkaConsumer

    from contracts import DeadLetterRecord

    since = datetime.now(UTC) - window
    counts: dict[str, int] = {}
    try:
        consumer = KafkaConsumer(
            env.config.topics.dead_letters,
            bootstrap_servers=env.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1500,
            **env.kafka_security.client_settings("kafka_python"),
        )
    except Exception:  # noqa: BLE001 - the broker is down
        return {}
    try:
        for seen, message in enumerate(consumer):
            if seen >= limit:
                break
            with contextlib.suppress(ValueError):
                record = DeadLetterRecord.model_validate_json(message.value)
                if record.received_at >= since:
                    reason = record.reason[:80]
                    counts[reason] = counts.get(reason, 0) + 1
    finally:
        consumer.close()
    return counts
