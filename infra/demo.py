"""`streamrl demo`: the whole loop on the embedded local stack, for N simulated days.

Until a model is approved the app decides with its own hand-written rule and logs each decision
through serving's log-only `POST /v1/decisions`; every night the refresh trains a candidate on
all timelines so far, evaluates it counterfactually on what the logging policy (the rule, or
the deployed model) logged that day, and deploys it only if the gate approves. Serving
hot-swaps it before the next day, and from then on the app asks `POST /v1/act/batch`.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from apps.notification_app import DayOutcome, run_day
from apps.notifications import ACTIONS, NotificationSim
from contracts import StreamrlError, Topics
from evaluation import CpeReport
from features import NormalizationSpec
from infra.environment import Environment
from infra.loop_waits import serves, wait_for_timelines, wait_serving
from infra.processes import ManagedProcess, start_process
from infra.refresh import RefreshResult, run_refresh
from infra.stack import LocalStack
from stream import EventLogger, ensure_topics, load_timelines
from trainer import ModelRegistry

Progress = Callable[[str], None]


class DemoError(StreamrlError):
    """The demo could not complete a day (a service died or timelines never arrived)."""


@dataclass(frozen=True)
class DaySummary:
    """One row of the demo table; field names are the keys of runs/demo/summary.json."""

    day: int
    model_version: str  # the model that served this day
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
    gate: str  # "approved" or "rejected"
    gate_reasons: list[str]


def run_demo(env: Environment, *, progress: Progress = print) -> list[DaySummary]:
    """Run `config.demo.days` days end to end; returns (and writes) the per-day summary."""
    demo = env.config.demo
    run_id = uuid.uuid4().hex[:8]
    # Fresh topics per run: the broker may hold a previous run's events.
    topics = Topics(
        decisions=f"decisions.{run_id}",
        rewards=f"rewards.{run_id}",
        dead_letters=f"dead_letters.{run_id}",
        metrics=f"metrics.{run_id}",
    )
    env = Environment.from_config(env.config.model_copy(update={"topics": topics}), env.run_dir)
    if env.run_dir.exists():
        shutil.rmtree(env.run_dir)
    env.run_dir.mkdir(parents=True)
    (env.run_dir / "environment.json").write_text(env.config.model_dump_json(indent=2))
    run_args = ["-m", "infra.cli"]
    env_args = ["--config", str(env.run_dir / "environment.yaml"), "--run-dir", str(env.run_dir)]
    _write_yaml(env, env.run_dir / "environment.yaml")

    started = time.monotonic()
    stack = LocalStack(env.config.stack)
    was_up = all(s.healthy for s in stack.status())
    progress(
        f"[stack] {'already running' if was_up else 'starting'}: broker {stack.bootstrap_servers}, redis {stack.redis_url}"
    )
    stack.up()
    processes: list[ManagedProcess] = []
    stop_ingest = threading.Event()
    try:
        ensure_topics(env.bootstrap_servers, topics)
        from features import build_feature_store, run_online_ingest

        progress("[features] applying the Feast repository (Redis online store, parquet offline store)")
        build_feature_store(env.feature_store_config())
        registry = ModelRegistry(env.registry_dir)
        sim = NotificationSim(demo.simulator)
        rule = sim.rule()
        progress(
            f"[registry] no model deployed: the app's {rule.name} (ε={rule.epsilon}) logs day 0 "
            "through POST /v1/decisions/batch"
        )
        # What /healthz names while no model is loaded: the uniform fallback's label, or none.
        no_model = getattr(env.config.serving.fallback, "model_version", None)

        serving = start_process("serving", [*run_args, "serve", *env_args], env.logs_dir / "serving.log")
        processes.append(serving)
        stream = start_process("stream", [*run_args, "stream", *env_args], env.logs_dir / "stream.log")
        processes.append(stream)
        if env.config.monitoring.enabled:
            processes.append(
                start_process(
                    "monitor", [*run_args, "monitor", "--worker", *env_args], env.logs_dir / "monitor.log"
                )
            )
        ingest = threading.Thread(
            target=run_online_ingest,
            args=(env.feature_store_config(), env.bootstrap_servers, topics, stop_ingest),
            kwargs={"batch_size": 2000},
            name="feature-ingest",
            daemon=True,
        )
        ingest.start()
        serving.wait_ready(
            lambda: serves(env.serving_url, registry.deployed() or no_model),
            120,
            "GET /healthz answering",
        )
        progress(
            f"[serving] {env.serving_url} ready; stream job and monitor starting (logs in {env.logs_dir})"
        )

        summaries: list[DaySummary] = []
        previous_spec: NormalizationSpec | None = None
        previous_report: CpeReport | None = None
        with EventLogger(env.bootstrap_servers, topics) as logger:
            for day in range(demo.days):
                # The rule is the logging policy until the gate approves a model (a rejected
                # candidate leaves nothing deployed, and the rule logs another day).
                deployed = registry.deployed()
                wait_serving(env.serving_url, deployed or no_model, serving)
                served_version = deployed or rule.name
                day_start = pd.Timestamp.now(tz="UTC")
                how = "POST /v1/act/batch" if deployed else "the app decides, POST /v1/decisions/batch logs"
                progress(
                    f"[day {day}] {served_version} ({how}): {demo.simulator.n_users} users × "
                    f"{demo.simulator.slots_per_day} slots"
                )
                day_started = time.monotonic()
                outcome = run_day(
                    sim,
                    day,
                    env.serving_url,
                    logger,
                    rule=None if deployed else rule,
                    batch_size=demo.request_batch_size,
                )
                progress(
                    f"[day {day}] {outcome.decisions} decisions in {time.monotonic() - day_started:.1f}s, "
                    f"realized mean reward {outcome.realized_reward:.4f} (sent {outcome.send_share:.0%}); "
                    "waiting for the stream to close the day's MDPs"
                )
                day_rows = wait_for_timelines(
                    env,
                    outcome.request_ids,
                    day_start,
                    [stream, serving],
                    demo.timelines_wait_s,
                    what=f"day {outcome.day.index}",
                    error=DemoError,
                )
                training_rows = load_timelines(env.stream_config().output_dir)
                # CPE compares the candidate with the policy that logged the evaluation rows, so it
                # may pool every day that policy served: more episodes, a narrower interval.
                evaluation_rows = training_rows[training_rows["model_version"] == served_version]
                progress(
                    f"[night {day}] refresh: {len(training_rows)} timeline rows to train on, "
                    f"{len(evaluation_rows)} logged by {served_version} to evaluate on"
                )
                result = run_refresh(
                    env,
                    training_rows,
                    evaluation_rows,
                    ACTIONS,
                    demo.learned_exploration,
                    label=f"day{day}",
                    previous_spec=previous_spec,
                    previous_report=previous_report,
                )
                summary = _summarize(sim, day, outcome, served_version, day_rows, result)
                summaries.append(summary)
                _report_night(progress, result, summary)
                previous_spec = result.spec
                if result.decision.approved:
                    previous_report = result.report
                _write_summary(env, summaries)
        progress("")
        progress(format_summary(summaries))
        for line in cpe_checks(summaries):
            progress(line)
        progress("")
        progress(f"summary:      {env.run_dir / 'summary.json'}")
        progress(f"CPE reports:  {env.reports_dir}/<model>/cpe_report.json, gate.json")
        progress(f"TensorBoard:  tensorboard --logdir {env.tensorboard_dir}")
        progress(
            f"monitoring:   streamrl monitor --once --run-dir {env.run_dir} --config {env.run_dir / 'environment.yaml'}"
        )
        progress(f"total time {time.monotonic() - started:.0f}s")
        return summaries
    finally:
        stop_ingest.set()
        for process in reversed(processes):
            process.stop()
        if not was_up:
            stack.down()


# --- steps --------------------------------------------------------------------------------------
def _summarize(
    sim: NotificationSim,
    day: int,
    outcome: DayOutcome,
    served_version: str,
    day_rows: pd.DataFrame,
    result: RefreshResult,
) -> DaySummary:
    logging_reward = sim.policy_value(outcome.day, sim.rule().send_probability)
    oracle_reward = sim.oracle_value(outcome.day)
    gap = oracle_reward - logging_reward
    nan = float("nan")
    report = result.report
    head = report.headline_estimate if report is not None else None
    # A sequential headline values the undiscounted return of a user's day (evaluation.gamma 1):
    # divided by the decisions per day, it is the mean reward per decision that `realized` measures.
    per_decision = 1.0
    if report is not None and report.problem == "multi_step" and report.headline != "dm":
        per_decision = report.n_episodes / report.n_decisions if report.gamma == 1.0 else nan
    return DaySummary(
        day=day,
        model_version=served_version,
        realized_reward=outcome.realized_reward,
        logging_reward=logging_reward,
        oracle_reward=oracle_reward,
        gap_closed=(outcome.realized_reward - logging_reward) / gap if gap > 0 else nan,
        decisions=outcome.decisions,
        timeline_rows=len(day_rows),
        candidate_version=result.candidate.version,
        cpe_estimator=report.headline if report is not None else "",
        cpe_estimate=head.value * per_decision if head and head.value is not None else nan,
        cpe_ci_low=head.ci_low * per_decision if head and head.ci_low is not None else nan,
        cpe_ci_high=head.ci_high * per_decision if head and head.ci_high is not None else nan,
        cpe_normalized=head.normalized if head and head.normalized is not None else nan,
        gate="approved" if result.decision.approved else "rejected",
        gate_reasons=list(result.decision.reasons),
    )


def _report_night(progress: Progress, result: RefreshResult, summary: DaySummary) -> None:
    if result.spec_diff is not None and result.spec_diff.has_changes:
        progress(f"    normalization spec changed: {result.spec_diff.summary()}")
    progress(f"    spec {result.spec.version} -> {result.spec_path}")
    if result.feature_report is not None:
        progress(f"    feature report {result.feature_report}")
    progress(
        f"    candidate {summary.candidate_version}: TD loss "
        f"{result.candidate.training_metrics.get('train/td_loss', float('nan')):.4f}"
    )
    if result.report is not None:
        progress(f"    CPE: {result.report.verdict}")
    progress(
        f"    gate: {summary.gate}"
        + (f" ({'; '.join(summary.gate_reasons)})" if summary.gate_reasons else "")
    )


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
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                str(r.day),
                r.model_version,
                f"{r.realized_reward:.4f}",
                f"{r.logging_reward:.4f}",
                f"{r.oracle_reward:.4f}",
                f"{r.gap_closed:.0%}",
                r.candidate_version,
                f"{r.cpe_estimate:.4f} [{r.cpe_ci_low:.4f}, {r.cpe_ci_high:.4f}]",
                r.gate,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def cpe_checks(rows: list[DaySummary]) -> list[str]:
    """For every approved candidate, its CPE estimate per decision against what it realized on the
    days it then served (the trust check of a CPE number, docs/demo.md)."""
    lines = []
    for night, row in enumerate(rows):
        if row.gate != "approved":
            continue
        served = [later for later in rows[night + 1 :] if later.model_version == row.candidate_version]
        for later in served:
            error = (row.cpe_estimate - later.realized_reward) / abs(later.realized_reward)
            lines.append(
                f"CPE check: night {night} estimated {row.cpe_estimate:.4f} per decision for {row.candidate_version} "
                f"({row.cpe_estimator}, 95% CI {row.cpe_ci_low:.4f}–{row.cpe_ci_high:.4f}); it realized "
                f"{later.realized_reward:.4f} on day {later.day} ({error:+.1%})"
            )
    return lines


def _write_summary(env: Environment, rows: list[DaySummary]) -> Path:
    """A JSON list with one object per day (strict JSON: NaN becomes null)."""
    path = env.run_dir / "summary.json"
    days = [{"schema_version": 1, **{k: _json_safe(v) for k, v in asdict(r).items()}} for r in rows]
    path.write_text(json.dumps(days, indent=2, allow_nan=False))
    return path


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_yaml(env: Environment, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(env.config.model_dump_json())))
