"""`streamrl demo`: the notifications example app run through `streamrl up`, one simulated day at a time.

The demo does what a user of apps/notifications would do, and nothing beside it: `streamrl up` the
app's manifest (serving, the timeline job, feature ingest, the monitor and the refresh scheduler,
each its own process, recorded under `<run_dir>/notifications/`), run the app's simulator once per
day, and let the scheduler refresh after each day. Per day it

1. waits until serving serves what the registry deploys: a model a refresh approved, or none;
2. runs `apps/notifications/simulator.py --day N` as a subprocess, as a user would. While no model
   is deployed the app decides by its hand-written rule and logs each decision through
   `POST /v1/apps/notifications/decisions/batch`; once one is, it asks `/act/batch`. It sends the
   rewards to Kafka and prints the day: realized reward, the rule's and the oracle's exact values;
3. waits for the scheduler's row-triggered refresh of that day. The demo's copy of the manifest
   (`<run_dir>/manifest.yaml`) sets `refresh.every_new_rows` to one day's decisions (users × 4
   slots) and no daily time, so the refresh starts once every decision of the day is a timeline
   row, trains on every day so far and evaluates on what the logging policy logged;
4. reads what the refresh did from the scheduler's state (`scheduler/state.json`) and the
   candidate's CPE report and gate decision (`reports/<candidate>/`).

It prints the table, writes `<run_dir>/summary.json`, and at the end `streamrl down`s the app (and
the stack, if `up` started it; a stack that was up before stays up).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from apps import notifications as example_app
from contracts import StreamrlError
from evaluation import CpeReport, GateDecision, ReportError, load_report
from evaluation.canary import CANARY_FILE, CanaryVerdict
from evaluation.gate import GATE_FILE
from infra.apps import AppsError, down, known_apps, resolve_app, status, up
from infra.config import DemoSection, StreamrlConfig
from infra.environment import Environment
from infra.loop_waits import serves
from infra.manifest import AppManifest, load_manifest
from infra.scheduler import RefreshOutcome, RefreshRecord, SchedulerPhase, read_scheduler_state
from infra.stack import LocalStack
from trainer import CanaryState

Progress = Callable[[str], None]
SLOTS_PER_DAY: int = example_app.NotificationSimConfig.model_fields["slots_per_day"].default  # the world's, 4
CHECK_COMPONENTS_EVERY_S = 30.0


class DemoError(StreamrlError):
    """The demo could not complete a day (a component stopped, the simulator failed, a refresh never came)."""


def app_folder() -> Path:
    """apps/notifications: the example app's manifest and simulator."""
    return Path(example_app.__file__).resolve().parent


@dataclass(frozen=True)
class DemoPlan:
    """What `run_demo` runs: `days` days of `users` users of the example app.

    `seed`, `rule_seed` and `rule_epsilon` go to the simulator (None: its defaults, the world's
    seed 7, rule seed 1234, ε 0.2); `manifest_overrides` are merged into the demo's copy of the
    example manifest, key by key (a test's ports, gate and trainer)."""

    days: int = 3
    users: int = 4000
    seed: int | None = None
    rule_seed: int | None = None
    rule_epsilon: float | None = None
    batch_size: int = 500
    day_timeout_s: float = 900.0
    manifest_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.days < 1 or self.users < 1 or self.batch_size < 1:
            raise DemoError(
                f"the demo needs days, users and batch_size >= 1, got {self.days}, {self.users}, {self.batch_size}"
            )

    @classmethod
    def from_config(
        cls, section: DemoSection, *, days: int | None = None, users: int | None = None
    ) -> DemoPlan:
        """The environment file's `demo:` section, with the command line's --days and --users."""
        return cls(
            days=section.days if days is None else days,
            users=section.users if users is None else users,
            day_timeout_s=section.day_timeout_s,
        )

    @property
    def decisions_per_day(self) -> int:
        return self.users * SLOTS_PER_DAY


@dataclass(frozen=True)
class DaySummary:
    """One row of the demo table; field names are the keys of runs/demo/summary.json."""

    day: int
    model_version: str  # the model that served this day, or the rule's label
    realized_reward: float  # mean reward per decision it realized
    logging_reward: float  # the hand-written rule (the day-0 logging policy) on the same users, exact
    oracle_reward: float  # best achievable on the same users, exact
    gap_closed: float  # (realized − logging) / (oracle − logging)
    decisions: int
    timeline_rows: int
    candidate_version: str  # trained tonight
    cpe_estimator: str  # the report's headline (the estimate the gate judged)
    cpe_estimate: float  # candidate's estimated mean reward per decision as served (headline, raw)
    cpe_ci_low: float
    cpe_ci_high: float
    cpe_normalized: float
    gate: str  # "approved", "canary" (undecided: tried on a share of the user-days), "rejected", or
    # "skipped" (the refresh trained nothing: gate_reasons says why)
    gate_reasons: list[str]
    canary_version: str = ""  # the canary that served beside `model_version` this day, if any
    canary_share: float = math.nan
    realized_by_version: dict[str, float] = field(default_factory=dict)  # mean reward per decision
    canary_outcome: str = ""  # what tonight's refresh decided about it: promote, stop or continue
    canary_estimate: float = (
        math.nan
    )  # its realized mean per decision the verdict judged (complete user-days)
    canary_baseline: float = math.nan  # the same for the episodes beside it


def run_demo(
    env: Environment, plan: DemoPlan | None = None, *, progress: Progress = print
) -> list[DaySummary]:
    """Run `plan` (default: the environment's `demo:` section) in `env.run_dir`; returns (and writes)
    the per-day summary. `env.config` is the base environment: the stack and the stages' defaults."""
    plan = plan or DemoPlan.from_config(env.config.demo)
    started = time.monotonic()
    run_dir = env.run_dir
    config = env.config.model_copy(update={"run_dir": run_dir, "apps_dir": run_dir})
    reran = _clear_previous_run(config, progress)
    run_dir.mkdir(parents=True)
    config_path = _write_environment(config, run_dir / "environment.yaml")
    manifest_path = write_demo_manifest(plan, run_dir / "manifest.yaml")
    manifest = load_manifest(manifest_path)
    _check_app_is_free(config, manifest, may_delete_topics=reran, progress=progress)
    summaries: list[DaySummary] = []
    try:
        up([manifest_path], config, config_path=config_path, progress=progress)
        app_env = Environment.for_app(config, resolve_app(manifest.app, config))
        from trainer import ModelRegistry

        registry = ModelRegistry(app_env.registry_dir)
        progress(
            f"[demo] {plan.days} days of {plan.users} users × {SLOTS_PER_DAY} slots; the scheduler refreshes "
            f"after every {plan.decisions_per_day} new timeline rows (one day)"
        )
        for day in range(plan.days):
            deployed, canary = registry.deployed(), registry.canary()
            trying = canary.version if canary is not None else None
            _wait(
                lambda version=deployed, beside=trying: serves(app_env.serving_url, version, beside),
                config,
                manifest.app,
                60.0,
                f"serving {deployed or 'no model'}{f' and canary {trying}' if trying else ''} at "
                f"{app_env.serving_url}",
            )
            progress(f"[day {day}] {_how_served(manifest.app, deployed, canary)}")
            before = read_scheduler_state(app_env.run_dir)
            last_turn = before.last_refresh.started_at if before and before.last_refresh else None
            day_started = time.monotonic()
            outcome = _simulate(plan, app_env, manifest_path, day, run_dir / "simulator")
            progress(
                f"[day {day}] {outcome['decisions']} decisions by {_deciders(outcome)} in "
                f"{time.monotonic() - day_started:.1f}s, realized {outcome['realized_reward']:.4f} per decision "
                f"(sent {outcome['send_share']:.0%}); waiting for the scheduler's refresh of the day"
            )
            if outcome["decisions"] != plan.decisions_per_day:
                raise DemoError(
                    f"day {day}: the simulator made {outcome['decisions']} decisions, not the "
                    f"{plan.decisions_per_day} the manifest's every_new_rows waits for"
                )
            record = _wait_for_refresh(config, app_env, manifest.app, last_turn, day, plan, progress)
            request_ids = Path(outcome["request_ids_file"]).read_text().split()
            summary = _summarize(app_env, day, outcome, record, _timeline_rows(app_env, request_ids), canary)
            summaries.append(summary)
            _report_night(progress, app_env, record, summary)
            _write_summary(run_dir, summaries)
        progress("")
        progress(format_summary(summaries))
        for line in cpe_checks(summaries):
            progress(line)
        progress("")
        progress(f"summary:      {run_dir / 'summary.json'}")
        progress(f"CPE reports:  {app_env.reports_dir}/<model>/cpe_report.json, gate.json")
        progress(
            f"refreshes:    {app_env.run_dir / 'scheduler' / 'state.json'}, {app_env.logs_dir}/scheduler.log"
        )
        progress(f"TensorBoard:  tensorboard --logdir {app_env.tensorboard_dir}")
        progress(
            f"monitoring:   streamrl monitor --once --app {manifest.app} --config {config_path} "
            "(while the stack is up)"
        )
        progress(f"total time {time.monotonic() - started:.0f}s")
        return summaries
    finally:
        try:
            down(config, [manifest.app], progress=progress)
        except AppsError as exc:  # `up` failed before recording the app: nothing of it to stop
            progress(f"[demo] nothing to stop: {exc}")


# --- before the first day -------------------------------------------------------------------------
def _clear_previous_run(config: StreamrlConfig, progress: Progress) -> bool:
    """Stop what an earlier demo in this folder left running, then delete the folder. True when an
    earlier demo ran here (its topics may be deleted: they hold its events)."""
    run_dir = Path(config.apps_dir)
    earlier = known_apps(config)
    if earlier:
        stopped = down(config, earlier, progress=lambda _: None)
        progress(
            f"[demo] deleting the earlier demo in {run_dir}"
            + (f" (stopped what it left running: {', '.join(stopped)})" if stopped else "")
        )
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return bool(earlier)


def _write_environment(config: StreamrlConfig, path: Path) -> Path:
    """The environment the app's processes run with: the base one, with apps_dir = the demo's folder."""
    path.write_text(
        "# Written by `streamrl demo`: the environment its app runs in (apps_dir is this folder).\n"
        + yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
    )
    return path


def write_demo_manifest(plan: DemoPlan, path: Path) -> Path:
    """The example manifest, `plan.manifest_overrides` merged in key by key, set to refresh once per
    simulated day: every `users × 4` new timeline rows, no daily time (a demo day lasts seconds)."""
    source = app_folder() / "manifest.yaml"
    data = _merged(yaml.safe_load(source.read_text()), plan.manifest_overrides)
    refresh = data.setdefault("refresh", {})
    per_day = plan.decisions_per_day
    refresh.update(
        every_new_rows=per_day,
        daily_at_utc=None,
        min_training_rows=min(int(refresh.get("min_training_rows", per_day)), per_day),
    )
    path.write_text(
        f"# Written by `streamrl demo` from {source}: one refresh per simulated day of {plan.users} users\n"
        f"# × {SLOTS_PER_DAY} slots (refresh.every_new_rows), no daily refresh.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def _merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        merged[key] = _merged(old, value) if isinstance(old, dict) and isinstance(value, Mapping) else value
    return merged


def _check_app_is_free(
    config: StreamrlConfig, manifest: AppManifest, *, may_delete_topics: bool, progress: Progress
) -> None:
    """The app's ports must be free and, on a stack that is already up, its topics new: the timeline
    job reads them from the beginning. An earlier demo's topics are deleted; others are refused."""
    host = config.stack.host
    for what, port in (("serving", manifest.serving.port), ("monitor web", manifest.monitoring.web_port)):
        if port is not None and _answers(host, port):
            raise DemoError(
                f"the {what} port {host}:{port} of app {manifest.app!r} is taken by another process (is "
                f"`streamrl up` running {app_folder() / 'manifest.yaml'}? stop it with `streamrl down "
                f"{manifest.app}` and its --config); free it, or set another port in the manifest"
            )
    stack = LocalStack(config.stack)
    if not all(s.healthy for s in stack.status()):
        return  # `up` starts the stack; a memory broker starts empty
    from kafka import KafkaAdminClient

    from stream.topics import topic_names

    admin = KafkaAdminClient(
        bootstrap_servers=stack.bootstrap_servers, **config.kafka.client_settings("kafka_python")
    )
    try:
        left = sorted(set(topic_names(manifest.topics)) & set(admin.list_topics()))
        if not left:
            return
        if not may_delete_topics:
            raise DemoError(
                f"topics {left} already exist on the broker at {stack.bootstrap_servers}, and no earlier demo "
                f"ran in {config.apps_dir}: another run of app {manifest.app!r} owns them. Stop it and delete "
                "them, or `streamrl stack down` (the memory broker forgets), then rerun the demo"
            )
        progress(f"[demo] deleting the earlier demo's topics {left}")
        admin.delete_topics(left)
        deadline = time.monotonic() + 15.0
        while set(left) & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise DemoError(
                    f"topics {left} were still listed 15 s after deleting them; see the broker log"
                )
            time.sleep(0.2)
    finally:
        admin.close()


def _answers(host: str, port: int) -> bool:
    """Something listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# --- each day -------------------------------------------------------------------------------------
def _simulate(
    plan: DemoPlan, env: Environment, manifest_path: Path, day: int, out_dir: Path
) -> dict[str, Any]:
    """Run the app's simulator for `day`, as a user would; its JSON line (also in `out_dir/day<N>.json`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(app_folder() / "simulator.py"),
        "--url",
        env.serving_url,
        "--bootstrap",
        env.bootstrap_servers,
        "--day",
        str(day),
        "--users",
        str(plan.users),
        "--batch",
        str(plan.batch_size),
        "--manifest",
        str(manifest_path),
        "--request-ids",
        str(out_dir / f"day{day}.request_ids"),
    ]
    for flag, value in (
        ("--seed", plan.seed),
        ("--rule-seed", plan.rule_seed),
        ("--rule-epsilon", plan.rule_epsilon),
    ):
        if value is not None:
            argv += [flag, str(value)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.day_timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(
            f"day {day}: the simulator ran over {plan.day_timeout_s:.0f}s: {' '.join(argv)}"
        ) from exc
    if done.returncode != 0:
        raise DemoError(
            f"day {day}: the simulator failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}\n"
            f"command: {' '.join(argv)}"
        )
    line = done.stdout.strip().splitlines()[-1]
    (out_dir / f"day{day}.json").write_text(line + "\n")
    return json.loads(line)


def _how_served(app: str, deployed: str | None, canary: CanaryState | None) -> str:
    beside = f" beside canary {canary.version} ({canary.share:.0%} of the user-days)" if canary else ""
    if deployed:
        return f"{deployed}{beside} (serving decides, POST /v1/apps/{app}/act/batch)"
    if canary:
        return (
            f"the app's rule{beside} (POST /v1/apps/{app}/act/batch: serving decides the canary's user-days "
            f"and answers the others not_served; the app decides those by its rule and logs them)"
        )
    return f"no model deployed (the app decides by its rule, POST /v1/apps/{app}/decisions/batch logs)"


def _deciders(outcome: Mapping[str, Any]) -> str:
    """Who made the day's decisions, e.g. "hand-written-rule (8008, realized 0.4189) and m0001-… (7992, 0.4634)"."""
    realized = outcome.get("realized_by_version", {})
    parts = [
        f"{version} ({count}, realized {realized[version]:.4f})" if version in realized else version
        for version, count in sorted(outcome["model_versions"].items(), key=lambda item: -item[1])
    ]
    return parts[0].split(" (")[0] if len(parts) == 1 else " and ".join(parts)


def _served_by(outcome: Mapping[str, Any], canary: str = "") -> str:
    """The policy that made most of the day's decisions but the canary (the rule's label or a model version)."""
    versions: dict[str, int] = {v: n for v, n in outcome["model_versions"].items() if v != canary}
    return max(versions, key=lambda v: versions[v]) if versions else canary


def _wait(
    probe: Callable[[], bool],
    config: StreamrlConfig,
    app: str,
    timeout_s: float,
    what: str,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Poll `probe` every second until true; fail early, with the log tail, if a component of the
    app stopped (checked every `CHECK_COMPONENTS_EVERY_S`). A timeout says `what` and `detail()`."""
    deadline = time.monotonic() + timeout_s
    next_check = time.monotonic() + CHECK_COMPONENTS_EVERY_S
    while not probe():
        now = time.monotonic()
        if now > deadline:
            raise DemoError(
                f"{what}: not within {timeout_s:.0f}s{detail()}; see the logs under "
                f"{config.apps_dir / app / 'logs'}"
            )
        if now > next_check:
            _check_components(config, app)
            next_check = now + CHECK_COMPONENTS_EVERY_S
        time.sleep(1.0)


def _check_components(config: StreamrlConfig, app: str) -> None:
    (app_status,) = status(config, [app])
    stopped = [c for c, state in app_status.components.items() if state == "STOPPED"]
    if stopped:
        logs = config.apps_dir / app / "logs"
        tails = "\n".join(
            f"--- {logs / f'{c}.log'}:\n" + "\n".join(_read(logs / f"{c}.log").splitlines()[-25:])
            for c in stopped
        )
        raise DemoError(f"app {app}: {', '.join(stopped)} stopped\n{tails}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"


def _wait_for_refresh(
    config: StreamrlConfig,
    env: Environment,
    app: str,
    last_turn: datetime | None,
    day: int,
    plan: DemoPlan,
    progress: Progress,
) -> RefreshRecord:
    """Until the scheduler finished a refresh turn that began after `last_turn`; its record."""
    announced = False
    record: RefreshRecord | None = None

    def refreshed() -> bool:
        nonlocal announced, record
        state = read_scheduler_state(env.run_dir)
        if state is None:
            return False
        last = state.last_refresh
        if last is not None and last.started_at != last_turn:
            record = last
            return True
        if state.phase is SchedulerPhase.REFRESHING and not announced:
            announced = True
            progress(
                f"[night {day}] the row trigger fired at {state.timeline_rows} timeline rows: the scheduler "
                "refreshes (spec, train, CPE, gate)"
            )
        return False

    def rows_so_far() -> str:
        state = read_scheduler_state(env.run_dir)
        seen = state.rows.rows_since_last if state is not None else 0
        return f" ({seen} of the day's {plan.decisions_per_day} decisions are timeline rows)"

    _wait(refreshed, config, app, plan.day_timeout_s, f"day {day}'s refresh", rows_so_far)
    assert record is not None
    if record.outcome is RefreshOutcome.FAILED:
        raise DemoError(
            f"night {day}: the refresh failed: {record.error}; see {env.logs_dir / 'scheduler.log'} "
            f"and {env.reports_dir / 'alerts.jsonl'}"
        )
    return record


def _timeline_rows(env: Environment, request_ids: list[str]) -> int:
    """How many of the day's decisions are timeline rows."""
    from stream import load_timelines

    rows = load_timelines(env.stream_config().output_dir)
    return int(rows["request_id"].isin(set(request_ids)).sum()) if len(rows) else 0


def _summarize(
    env: Environment,
    day: int,
    outcome: Mapping[str, Any],
    record: RefreshRecord,
    timeline_rows: int,
    canary: CanaryState | None = None,
) -> DaySummary:
    realized, logging_reward = outcome["realized_reward"], outcome["rule_reward"]
    oracle_reward = outcome["oracle_reward"]
    gap = oracle_reward - logging_reward
    nan = float("nan")
    candidate = record.chosen_version or (record.candidate_versions[0] if record.candidate_versions else "")
    report = _report(env, candidate)
    decision = _gate_decision(env, candidate)
    head = report.headline_estimate if report is not None else None
    # A sequential headline values the undiscounted return of a user's day (gate.gamma 1): divided
    # by the decisions per day, it is the mean reward per decision that `realized` measures.
    per_decision = 1.0
    if report is not None and report.problem == "multi_step" and report.headline != "dm":
        per_decision = report.n_episodes / report.n_decisions if report.gamma == 1.0 else nan
    if decision is not None:
        gate = "approved" if decision.approved else "canary" if decision.canary else "rejected"
        reasons = list(decision.reasons)
    else:
        gate, reasons = record.outcome.value, list(record.reasons)
    trying = canary.version if canary is not None else ""
    verdict = _canary_verdict(env, trying)
    return DaySummary(
        day=day,
        model_version=_served_by(outcome, trying),
        realized_reward=realized,
        logging_reward=logging_reward,
        oracle_reward=oracle_reward,
        gap_closed=(realized - logging_reward) / gap if gap > 0 else nan,
        decisions=outcome["decisions"],
        timeline_rows=timeline_rows,
        candidate_version=candidate,
        cpe_estimator=report.headline if report is not None else "",
        cpe_estimate=head.value * per_decision if head and head.value is not None else nan,
        cpe_ci_low=head.ci_low * per_decision if head and head.ci_low is not None else nan,
        cpe_ci_high=head.ci_high * per_decision if head and head.ci_high is not None else nan,
        cpe_normalized=head.normalized if head and head.normalized is not None else nan,
        gate=gate,
        gate_reasons=reasons,
        canary_version=trying,
        canary_share=canary.share if canary is not None else nan,
        realized_by_version=dict(outcome.get("realized_by_version", {})),
        canary_outcome=verdict.outcome if verdict is not None else "",
        canary_estimate=_per_decision(verdict.canary_mean if verdict is not None else None),
        canary_baseline=_per_decision(verdict.baseline_mean if verdict is not None else None),
    )


def _per_decision(episode_return: float | None) -> float:
    """A user-day's return as the mean reward per decision (the day's 4 slots)."""
    return episode_return / SLOTS_PER_DAY if episode_return is not None else math.nan


def _canary_verdict(env: Environment, version: str) -> CanaryVerdict | None:
    """Tonight's judgement of the canary that served today (`reports/<canary>/canary.json`)."""
    path = env.reports_dir / version / CANARY_FILE
    if not version or not path.is_file():
        return None
    return CanaryVerdict.model_validate_json(path.read_text())


def _report(env: Environment, version: str) -> CpeReport | None:
    if not version:
        return None
    try:
        return load_report(env.reports_dir / version)
    except ReportError:
        return None


def _gate_decision(env: Environment, version: str) -> GateDecision | None:
    path = env.reports_dir / version / GATE_FILE
    if not version or not path.is_file():
        return None
    return GateDecision.model_validate_json(path.read_text())


def _report_night(progress: Progress, env: Environment, record: RefreshRecord, summary: DaySummary) -> None:
    took = (record.finished_at - record.started_at).total_seconds()
    progress(
        f"[night {summary.day}] refresh ({record.trigger.value} trigger) in {took:.0f}s: trained on "
        f"{record.training_rows} rows, evaluated on the {record.evaluation_rows} logged by {record.logging_policy}"
    )
    if summary.candidate_version:
        from trainer import ModelRegistry

        metrics = ModelRegistry(env.registry_dir).metadata(summary.candidate_version).training_metrics
        progress(
            f"    candidate {summary.candidate_version}: TD loss {metrics.get('train/td_loss', float('nan')):.4f}"
        )
    report = _report(env, summary.candidate_version)
    if report is not None:
        progress(f"    CPE: {report.verdict}")
    if summary.canary_version:
        verdict = _canary_verdict(env, summary.canary_version)
        progress(
            f"    canary {summary.canary_version}: {verdict.outcome}: {verdict.reason}"
            if verdict is not None
            else f"    canary {summary.canary_version}: not judged"
        )
    progress(
        f"    gate: {summary.gate}"
        + (f" ({'; '.join(summary.gate_reasons)})" if summary.gate_reasons else "")
    )


# --- the table ------------------------------------------------------------------------------------
def format_summary(rows: list[DaySummary]) -> str:
    header = (
        "day",
        "served model",
        "realized",
        "hand-written",
        "oracle",
        "gap closed",
        "candidate",
        "CPE estimate [95% CI]",
        "gate",
        "canary verdict",
    )
    lines = [header]
    for r in rows:
        beside = f" + {r.canary_version} ({r.canary_share:.0%})" if r.canary_version else ""
        lines.append(
            (
                str(r.day),
                r.model_version + beside,
                f"{r.realized_reward:.4f}",
                f"{r.logging_reward:.4f}",
                f"{r.oracle_reward:.4f}",
                f"{r.gap_closed:.0%}",
                r.candidate_version or "-",
                f"{r.cpe_estimate:.4f} [{r.cpe_ci_low:.4f}, {r.cpe_ci_high:.4f}]",
                r.gate,
                f"{r.canary_outcome} ({r.canary_estimate:.4f} vs {r.canary_baseline:.4f})"
                if r.canary_outcome
                else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def cpe_checks(rows: list[DaySummary]) -> list[str]:
    """For every model deployed, the estimate it was deployed on against what it realized on each
    later day it served (the trust check of a CPE number, docs/demo.md): an approved candidate's
    CPE estimate per decision, or a promoted canary's realized mean on its share of the user-days."""
    lines = []
    for night, row in enumerate(rows):
        later_days = rows[night + 1 :]
        if row.gate == "approved":
            for later in later_days:
                if later.model_version != row.candidate_version:
                    continue
                lines.append(
                    f"CPE check: night {night} estimated {row.cpe_estimate:.4f} per decision for "
                    f"{row.candidate_version} ({row.cpe_estimator}, 95% CI {row.cpe_ci_low:.4f}–"
                    f"{row.cpe_ci_high:.4f}); it realized {_realized(later, row.candidate_version, row.cpe_estimate)}"
                )
        if row.canary_outcome == "promote":
            for later in later_days:
                if later.model_version != row.canary_version:
                    continue
                lines.append(
                    f"canary check: night {night} promoted {row.canary_version}, which realized "
                    f"{row.canary_estimate:.4f} per decision on its {row.canary_share:.0%} of day {row.day}'s "
                    f"user-days (the rest: {row.canary_baseline:.4f}); deployed, it realized "
                    f"{_realized(later, row.canary_version, row.canary_estimate)}"
                )
    return lines


def _realized(later: DaySummary, version: str, estimate: float) -> str:
    """What `version` realized on `later` (its own decisions, beside any canary), against `estimate`."""
    realized = later.realized_by_version.get(version, later.realized_reward)
    return f"{realized:.4f} on day {later.day} ({(estimate - realized) / abs(realized):+.1%})"


def _write_summary(run_dir: Path, rows: list[DaySummary]) -> Path:
    """A JSON list with one object per day (strict JSON: NaN becomes null)."""
    path = run_dir / "summary.json"
    days = [{"schema_version": 1, **{k: _json_safe(v) for k, v in asdict(r).items()}} for r in rows]
    path.write_text(json.dumps(days, indent=2, allow_nan=False))
    return path


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
