"""The refresh scheduler of one app: runs `infra.refresh` when the manifest's `refresh:` says so.

`streamrl schedule --app NAME` (and `streamrl up`, one process per app) polls every few seconds
whether a refresh is due (`refresh_due`, a pure function of the state, the time, the timeline row
count and the app's `RefreshSpec`):

- daily: the manifest's `daily_at_utc` has passed since the last turn began (an app never
  refreshed is due at once; with too few rows that first turn is skipped and says why);
- rows: at least `every_new_rows` timeline rows arrived since the last turn began, counted from
  the parquet footers of the committed files (`TimelineRowCounter`: only new or rewritten files
  are opened, so a poll every 10 s stays cheap).

A turn trains on the last `train_days` of timelines and evaluates on the rows the deployed model
logged in them (with none deployed, the day-0 policy's; `infra.refresh.refresh_inputs`); the
deployed model's CPE report feeds the gate's swing check. Fewer than `min_training_rows` rows:
the turn is skipped, with why. A failed attempt (any exception) is logged with its traceback,
appended to `reports/alerts.jsonl` (a `RefreshFailureAlert`) and retried after each delay of
`retry_backoff_s` in turn; when those are spent, the app waits for its next turn. While a retry is
pending, no other trigger fires.

Serving never goes without a model: only an approved candidate moves the registry's deploy
pointer, and that move is one atomic file replace; a failed or rejected refresh (or one killed
mid-way) leaves the previous model serving.

After every change the scheduler writes its state to `<run_dir>/scheduler/state.json`
(`SchedulerState`), which `streamrl status` reads back with `read_scheduler_state`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import StreamrlError
from evaluation.gate import ALERTS_FILE
from infra.environment import Environment
from infra.manifest import RefreshSpec
from infra.refresh import RefreshProgress, refresh_inputs, run_refresh
from stream._layout import timelines_path

STATE_FILE = Path("scheduler") / "state.json"
POLL_INTERVAL_S = 10.0

Clock = Callable[[], datetime]
_log = logging.getLogger(__name__)


class SchedulerError(StreamrlError):
    """The scheduler cannot run for this environment, or its state file is unreadable."""


class RefreshTrigger(StrEnum):
    DAILY = "daily"  # the manifest's daily_at_utc passed since the last turn
    ROWS = "rows"  # every_new_rows timeline rows arrived since the last turn


class RefreshOutcome(StrEnum):
    DEPLOYED = "deployed"  # a candidate was approved and now serves
    REJECTED = "rejected"  # the gate approved none; the previous model keeps serving
    SKIPPED = "skipped"  # too few timeline rows; nothing trained
    FAILED = "failed"  # an exception; the previous model keeps serving


class SchedulerPhase(StrEnum):
    WAITING = "waiting"
    REFRESHING = "refreshing"
    STOPPED = "stopped"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RefreshRecord(_Record):
    """One refresh attempt and how it ended."""

    started_at: datetime
    finished_at: datetime
    trigger: RefreshTrigger
    attempt: int = Field(1, ge=1, description="1: the turn's first try; n: its (n-1)th retry")
    outcome: RefreshOutcome
    training_rows: int | None = Field(None, description="rows of the last train_days (None: not read)")
    evaluation_rows: int | None = Field(
        None,
        description="of them, logged by `logging_policy`; a share of their MDPs is held out and evaluated on",
    )
    logging_policy: str | None = Field(
        None, description="whose logged decisions the candidates were judged on"
    )
    confidence: float | None = Field(
        None, description="each candidate's interval confidence: the gate's, Bonferroni-corrected for a grid"
    )
    candidate_versions: list[str] = Field(default_factory=list)
    chosen_version: str | None = Field(None, description="the candidate deployed, if any")
    reasons: list[str] = Field(
        default_factory=list,
        description="the gate's reasons per candidate, the grid's choice, or why skipped",
    )
    error: str | None = Field(None, description="failed: the exception, type and message")


class RowTrigger(_Record):
    """The row trigger's progress towards the next refresh."""

    rows_since_last: int
    every_new_rows: int | None = Field(description="None: the app refreshes on its daily time only")


class SchedulerState(_Record):
    """Contents of `<run_dir>/scheduler/state.json`, rewritten after every change."""

    schema_version: Literal[1] = 1
    app: str | None
    phase: SchedulerPhase = SchedulerPhase.WAITING
    updated_at: datetime
    turn_started_at: datetime | None = Field(
        None, description="when the last turn began: the daily trigger counts from it (None: never refreshed)"
    )
    rows_at_last_refresh: int = Field(0, ge=0, description="timeline rows when the last turn began")
    timeline_rows: int = Field(0, ge=0, description="timeline rows at the last poll")
    last_refresh: RefreshRecord | None = None
    consecutive_failures: int = Field(0, ge=0, description="failed attempts since the last that did not fail")
    retry_at: datetime | None = Field(
        None, description="when the failed turn is tried again (None: no retry)"
    )
    next_daily_at: datetime | None = Field(None, description="the next daily refresh (None: no daily time)")
    rows: RowTrigger


class RefreshFailureAlert(_Record):
    """A line of `reports/alerts.jsonl` (next to the gate's `GateAlert` lines; tell them by `kind`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    kind: Literal["refresh_failed"] = "refresh_failed"
    app: str | None
    trigger: RefreshTrigger
    attempt: int
    consecutive_failures: int
    error: str
    retry_at: datetime | None
    message: str
    raised_at: datetime


@dataclass(frozen=True)
class DueRefresh:
    """A refresh `refresh_due` found due: what triggered the turn, and which attempt of it this is."""

    trigger: RefreshTrigger
    attempt: int = 1


# --- the pure rules ----------------------------------------------------------------------------
def next_daily_at(turn_started_at: datetime | None, spec: RefreshSpec, now: datetime) -> datetime | None:
    """The daily time the next turn waits for: the first after the last turn began (`RefreshSpec.next_daily`),
    or `now` for an app never refreshed. None without a daily time."""
    if spec.daily_at_utc is None:
        return None
    if turn_started_at is None:
        return now
    return spec.next_daily(turn_started_at)


def refresh_due(state: SchedulerState, now: datetime, row_count: int, spec: RefreshSpec) -> DueRefresh | None:
    """Whether a refresh is due at `now` with `row_count` timeline rows, and why; None: not yet.

    A pending retry is the only thing that can be due until its time comes. Otherwise the daily
    time (`next_daily_at`) or `every_new_rows` rows since the last turn began start a new turn.
    """
    if state.retry_at is not None:
        if now < state.retry_at or state.last_refresh is None:
            return None
        return DueRefresh(state.last_refresh.trigger, state.last_refresh.attempt + 1)
    daily = next_daily_at(state.turn_started_at, spec, now)
    if daily is not None and now >= daily:
        return DueRefresh(RefreshTrigger.DAILY)
    if spec.every_new_rows is not None and row_count - state.rows_at_last_refresh >= spec.every_new_rows:
        return DueRefresh(RefreshTrigger.ROWS)
    return None


def retry_at(failed_at: datetime, attempt: int, spec: RefreshSpec) -> datetime | None:
    """When attempt `attempt` (1-based) of a turn, failed at `failed_at`, is tried again: after
    `retry_backoff_s[attempt - 1]`; None once the delays are spent (wait for the next turn)."""
    if attempt > len(spec.retry_backoff_s):
        return None
    return failed_at + timedelta(seconds=spec.retry_backoff_s[attempt - 1])


def after_attempt(
    state: SchedulerState, record: RefreshRecord, spec: RefreshSpec, row_count_at_start: int
) -> SchedulerState:
    """The state once `record` finished: a first attempt starts a turn (the triggers count from
    its start); a failure schedules the next retry or, the delays spent, none; anything else
    clears the failures."""
    update: dict[str, object] = {"last_refresh": record, "updated_at": record.finished_at}
    if record.attempt == 1:
        update |= {"turn_started_at": record.started_at, "rows_at_last_refresh": row_count_at_start}
    if record.outcome is RefreshOutcome.FAILED:
        update |= {
            "consecutive_failures": state.consecutive_failures + 1,
            "retry_at": retry_at(record.finished_at, record.attempt, spec),
        }
    else:
        update |= {"consecutive_failures": 0, "retry_at": None}
    return state.model_copy(update=update)


# --- reading the row count cheaply ------------------------------------------------------------
class TimelineRowCounter:
    """Counts committed timeline rows from parquet footers, opening only files new or rewritten
    since the last count (a replayed batch is rewritten in place: its size or mtime changes)."""

    def __init__(self, output_dir: Path):
        self.root = timelines_path(Path(output_dir))
        self._seen: dict[Path, tuple[int, int, int]] = {}  # file -> (mtime_ns, size, rows)

    def count(self) -> int:
        seen: dict[Path, tuple[int, int, int]] = {}
        # Committed files only: Spark stages new ones under dot-directories (`stream.reader`).
        for path in self.root.glob("ds=*/batch_id=*/*.parquet"):
            try:
                stat = path.stat()
                known = self._seen.get(path)
                if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
                    seen[path] = known
                else:
                    seen[path] = (stat.st_mtime_ns, stat.st_size, pq.read_metadata(path).num_rows)
            except FileNotFoundError:  # replaced while listed; the next poll counts its successor
                continue
        self._seen = seen
        return sum(rows for _, _, rows in seen.values())

    @property
    def files(self) -> list[Path]:
        """The committed files of the last count."""
        return list(self._seen)


# --- the scheduler -----------------------------------------------------------------------------
def _utc_now() -> datetime:
    return datetime.now(UTC)


def read_scheduler_state(run_dir: Path | str) -> SchedulerState | None:
    """The state a scheduler last wrote under `run_dir` (an app's folder), or None if none ran there."""
    path = Path(run_dir) / STATE_FILE
    try:
        return SchedulerState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise SchedulerError(
            f"{path} is not a valid scheduler state: {exc.errors()[:3]}; delete it and the scheduler "
            "starts afresh (the app refreshes at once)"
        ) from exc


class RefreshScheduler:
    """Refreshes one app's `Environment` whenever `refresh_due` says so; see the module docstring.

    `clock` gives the current UTC time (tests inject one). The state of a previous run under the
    same folder is picked up, so a restart neither repeats a refresh nor forgets a pending retry.
    """

    def __init__(
        self,
        env: Environment,
        *,
        clock: Clock = _utc_now,
        poll_interval_s: float = POLL_INTERVAL_S,
        progress: RefreshProgress = lambda line: _log.info("%s", line),
    ):
        if env.manifest is None:
            raise SchedulerError(
                "the scheduler refreshes an app: pass --app MANIFEST|NAME (its `refresh:` says when)"
            )
        self.env = env
        self.spec: RefreshSpec = env.manifest.refresh
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.progress = progress
        self.counter = TimelineRowCounter(env.stream_config().output_dir)
        self.path = env.run_dir / STATE_FILE
        previous = read_scheduler_state(env.run_dir)
        now = clock()
        if previous is not None and previous.app == env.app:
            self.state = previous.model_copy(update={"phase": SchedulerPhase.WAITING, "updated_at": now})
        else:
            self.state = SchedulerState(
                app=env.app,
                updated_at=now,
                rows=RowTrigger(rows_since_last=0, every_new_rows=self.spec.every_new_rows),
            )

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; a refresh under way finishes first (or is killed: the deploy
        pointer moves atomically, so serving keeps a model either way)."""
        _log.info("scheduler of app %s: refresh %s", self.env.app, self.spec.model_dump(mode="json"))
        self._write(self.state)
        try:
            while not stop.is_set():
                try:
                    self.poll()
                except Exception:  # e.g. an unreadable timeline file: say so, keep polling
                    _log.exception("scheduler of app %s: poll failed; polling again", self.env.app)
                stop.wait(self.poll_interval_s)
        finally:
            self._write(
                self.state.model_copy(update={"phase": SchedulerPhase.STOPPED, "updated_at": self.clock()})
            )

    def poll(self) -> RefreshRecord | None:
        """Check once; run the refresh if one is due. Returns its record, or None when none was due."""
        now = self.clock()
        rows = self.counter.count()
        due = refresh_due(self.state, now, rows, self.spec)
        if due is None:  # written anyway: `updated_at` tells `streamrl status` the scheduler is alive
            self._write(self.state.model_copy(update={"timeline_rows": rows, "updated_at": now}))
            return None
        self._write(
            self.state.model_copy(
                update={"phase": SchedulerPhase.REFRESHING, "timeline_rows": rows, "updated_at": now}
            )
        )
        record = self.attempt(due, now, rows)
        state = after_attempt(self.state, record, self.spec, rows)
        self._write(state.model_copy(update={"phase": SchedulerPhase.WAITING}))
        if record.outcome is RefreshOutcome.FAILED:
            self._alert(record)
        return record

    def attempt(self, due: DueRefresh, started_at: datetime, total_rows: int) -> RefreshRecord:
        """One refresh attempt; never raises (a failure is the record's outcome)."""
        env = self.env
        spec = self.spec
        base = {"started_at": started_at, "trigger": due.trigger, "attempt": due.attempt}
        label = f"{started_at:%Y%m%dT%H%M%S}-{due.trigger.value}" + (
            f"-retry{due.attempt - 1}" if due.attempt > 1 else ""
        )
        self.progress(
            f"refresh {label}: {due.trigger.value} trigger, attempt {due.attempt}, {total_rows} timeline rows"
        )
        few = (
            f"fewer than min_training_rows {spec.min_training_rows}: skipped; log more decisions (and their "
            "rewards) or lower refresh.min_training_rows"
        )
        if total_rows < spec.min_training_rows:  # the footers say so: no need to read the rows
            return self._skipped(base, f"{total_rows} timeline rows, {few}", total_rows)
        try:
            inputs = refresh_inputs(env, started_at, train_days=spec.train_days)
            training, evaluation = len(inputs.training_rows), len(inputs.evaluation_rows)
            if training < spec.min_training_rows:
                why = f"{training} timeline rows in the last {spec.train_days:g} days, {few}"
                return self._skipped(base, why, training, evaluation)
            min_rows = env.config.evaluation.min_rows
            if evaluation < min_rows:  # the gate would reject any candidate: do not train one
                why = (
                    f"{evaluation} rows logged by {inputs.logging_policy} in the last {spec.train_days:g} days to "
                    f"evaluate on, fewer than gate.min_rows {min_rows}: skipped; a candidate is judged on what "
                    "the serving policy logged, so it needs traffic first"
                )
                return self._skipped(base, why, training, evaluation)
            self.progress(
                f"refresh {label}: training on {training} rows; evaluating on {evaluation} "
                f"rows logged by {inputs.logging_policy}"
            )
            result = run_refresh(
                env,
                inputs.training_rows,
                inputs.evaluation_rows,
                None,
                inputs.exploration,
                label=label,
                previous_spec=inputs.previous_spec,
                previous_report=inputs.previous_report,
                progress=self.progress,
                configs=inputs.configs,
            )
        except Exception as exc:  # any failure: logged, alerted, retried; the deployed model keeps serving
            _log.exception("refresh %s of app %s failed (attempt %d)", label, env.app, due.attempt)
            return RefreshRecord(
                **base,
                finished_at=self.clock(),
                outcome=RefreshOutcome.FAILED,
                error=f"{type(exc).__name__}: {exc}",
            )
        reasons = [f"{c.model.version}: {reason}" for c in result.candidates for reason in c.decision.reasons]
        if result.selection:
            reasons.append(result.selection)
        return RefreshRecord(
            **base,
            finished_at=self.clock(),
            outcome=RefreshOutcome.DEPLOYED if result.deployed else RefreshOutcome.REJECTED,
            training_rows=len(inputs.training_rows),
            evaluation_rows=len(inputs.evaluation_rows),
            logging_policy=inputs.logging_policy,
            confidence=result.confidence,
            candidate_versions=[c.model.version for c in result.candidates],
            chosen_version=result.deployed,
            reasons=reasons,
        )

    def _skipped(
        self, base: dict, why: str, training_rows: int, evaluation_rows: int | None = None
    ) -> RefreshRecord:
        self.progress(f"refresh skipped: {why}")
        return RefreshRecord(
            **base,
            finished_at=self.clock(),
            outcome=RefreshOutcome.SKIPPED,
            training_rows=training_rows,
            evaluation_rows=evaluation_rows,
            reasons=[why],
        )

    def _alert(self, record: RefreshRecord) -> None:
        state = self.state
        then = (
            f"retrying at {state.retry_at:%Y-%m-%d %H:%M:%S} UTC"
            if state.retry_at is not None
            else "retries spent; the next turn is the next trigger"
        )
        alert = RefreshFailureAlert(
            app=self.env.app,
            trigger=record.trigger,
            attempt=record.attempt,
            consecutive_failures=state.consecutive_failures,
            error=record.error or "",
            retry_at=state.retry_at,
            message=f"refresh of app {self.env.app} failed (attempt {record.attempt}, {state.consecutive_failures} "
            f"in a row): {record.error}; the deployed model keeps serving; {then}",
            raised_at=record.finished_at,
        )
        path = self.env.reports_dir / ALERTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(alert.model_dump_json() + "\n")
        _log.warning("%s", alert.message)

    def _write(self, state: SchedulerState) -> None:
        """Keep `state` (with the derived next-refresh fields) and replace state.json atomically."""
        state = state.model_copy(
            update={
                "next_daily_at": next_daily_at(state.turn_started_at, self.spec, state.updated_at),
                "rows": RowTrigger(
                    rows_since_last=max(0, state.timeline_rows - state.rows_at_last_refresh),
                    every_new_rows=self.spec.every_new_rows,
                ),
            }
        )
        self.state = state
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(state.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(self.path)
