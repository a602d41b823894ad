"""The timeline job: Kafka decisions and rewards → validated, reward-attributed, closed MDPs → parquet.

Per micro-batch N (clock C = the `clock_ms` Spark logged for N):
1. the source reads N's offset ranges as Arrow batches and validates every record as it reads it
   (in Spark's Python workers: column-wise where it can, pydantic for the rest; bad ones become
   dead letters, each on its own) and hands each parsed chunk to Spark as one Arrow IPC cell; the
   driver collects them (`DataFrame.toArrow`) and opens them into one Arrow table;
2. the keyed passes run on the driver over Arrow (`stream._batch_passes.advance_timelines`): late
   decisions, reward attribution by request id, closing idle MDPs (attribution window + idle
   timeout after their last decision arrived), lead over sequence number, terminal rows;
3. timeline rows go to `timelines/ds=…/batch_id=N/`, dead letters to their topic, and the state
   to snapshot N. Outputs of N overwrite only N's own paths, so a replay is harmless; between
   batches the state also stays in memory, so a healthy run never reads its snapshot back.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from contracts import DeadLetterRecord, KafkaSecurity, StreamrlError, Topics
from contracts.kafka import PLAINTEXT
from stream._batch_passes import BatchOutcome, BatchRules, advance_timelines
from stream._layout import timelines_path
from stream._parse import unpack_parsed
from stream._rows import ARROW_ROW_SCHEMA
from stream._state import load_state, newest_snapshot_before, read_batch_clock, save_state
from stream.config import StreamConfig
from stream.kafka_source import SOURCE_NAME, KafkaEventSource, import_reading_modules

logger = logging.getLogger(__name__)


class DeadLetterError(StreamrlError):
    """Dead letters could not be delivered; the batch fails and is retried from the checkpoint."""

    def __init__(self, message: str, *, topic: str, count: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.count = count


def _send_dead_letters(
    rows: list[dict[str, Any]], bootstrap_servers: str, topic: str, clock_ms: int, security: KafkaSecurity
) -> None:
    """Deliver dead letters (at least once; keyed by source position so readers can dedupe)."""
    if not rows:
        return
    from confluent_kafka import KafkaException, Producer

    received_at = datetime.fromtimestamp(clock_ms / 1000, tz=UTC)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        | security.client_settings("confluent")
    )
    failed: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    try:
        for row in rows:
            record = DeadLetterRecord(
                source_topic=row["src_topic"],
                source_partition=row["src_partition"],
                source_offset=row["src_offset"],
                reason=row["reason"],
                payload=row["payload"] or "",
                received_at=received_at,
            )
            key = f"{row['src_topic']}:{row['src_partition']}:{row['src_offset']}".encode()
            while True:
                try:
                    producer.produce(topic, key=key, value=record.to_json_bytes(), on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(30)
    except KafkaException as exc:
        raise DeadLetterError(
            f"sending {len(rows)} dead letters to topic {topic!r} at {bootstrap_servers!r} failed: {exc}; "
            "the batch will be retried from the checkpoint",
            topic=topic,
            count=len(rows),
        ) from exc
    if failed or remaining:
        raise DeadLetterError(
            f"{len(failed) + remaining} of {len(rows)} dead letters were not delivered to topic {topic!r} at "
            f"{bootstrap_servers!r} ({failed[:1]}); the batch will be retried from the checkpoint",
            topic=topic,
            count=len(failed) + remaining,
        )


class TimelineWriteError(StreamrlError):
    """Batch N's timeline rows or state snapshot could not be written (a full disk, say). The batch
    is not committed to the checkpoint, so a restart with the same checkpoint writes it again."""

    def __init__(self, message: str, *, path: Path, batch_id: int, errno: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.batch_id = batch_id
        self.errno = errno


def _write_error(
    exc: OSError, what: str, path: Path, batch_id: int, config: StreamConfig
) -> TimelineWriteError:
    if exc.errno == errno.ENOSPC:
        cause = f"{os.strerror(errno.ENOSPC)}. Free space on the volume holding {config.output_dir}"
    else:
        cause = f"{exc}. Fix that"
    return TimelineWriteError(
        f"timeline batch {batch_id}: writing its {what} under {path} failed: {cause}, then restart the job "
        f"with the same checkpoint ({config.checkpoint_dir}): batch {batch_id} was not committed and is "
        "written again, losing and repeating nothing",
        path=path,
        batch_id=batch_id,
        errno=exc.errno,
    )


def write_timeline_batch(output_dir: Path, batch_id: int, timelines: pa.Table) -> None:
    """Write batch N's rows as `timelines/ds=…/batch_id=N/part-00000.parquet`, replacing any earlier
    attempt at N. Each file is staged under a dot-directory (which readers skip) and renamed in.

    Timestamps are written as INT96, as Spark writes them, so files from before and after the Arrow
    passes read back alike."""
    root = timelines_path(output_dir)
    columns = [name for name in timelines.column_names if name != "ds"]
    for ds in sorted(pc.unique(timelines["ds"]).to_pylist()):
        part = timelines.filter(pc.equal(timelines["ds"], ds)).select(columns)
        target = root / f"ds={ds}" / f"batch_id={batch_id}"
        staged = root / f"ds={ds}" / f".staging-{batch_id}-{uuid.uuid4().hex}"
        staged.mkdir(parents=True)
        try:
            pq.write_table(part, staged / "part-00000.parquet", use_deprecated_int96_timestamps=True)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)  # nothing else removes a failed attempt's staging
            raise
        if target.exists():
            shutil.rmtree(target)
        os.rename(staged, target)


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Remove the staging folders a killed job left (`ds=…/.staging-*`; readers skip them). Run
    before the job starts: one job writes an output folder, so none of them is in use."""
    stale = sorted(timelines_path(output_dir).glob("ds=*/.staging-*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        logger.warning("removed %d staging folder(s) left by an earlier run under %s", len(stale), output_dir)
    return stale


def driver_rss_bytes() -> int:
    """The driver process's current resident set size (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class BatchStats:
    """What the last processed batch did (for logs and benchmarks)."""

    batch_id: int = -1
    input_rows: int = 0
    timeline_rows: int = 0
    dead_letters: int = 0
    state_rows: int = 0
    driver_rss_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class TimelineBatchProcessor:
    """The `foreachBatch` function; remembers the next deadline to skip idle batches cheaply, and
    the state it last wrote, so the next batch need not read it back."""

    def __init__(
        self,
        config: StreamConfig,
        bootstrap_servers: str,
        topics: Topics,
        on_batch: Callable[[BatchStats], None] | None = None,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.config = config
        self.security = security
        self.on_batch = on_batch
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.state_dir = Path(config.output_dir) / "state"
        self.rules = BatchRules(
            attribution_window_ms=config.attribution_window_ms,
            close_after_ms=config.close_after_ms,
            closed_retention_ms=round(config.closed_mdp_retention_s * 1000),
            max_closed_mdps=config.max_closed_mdps,
            max_mdp_length=config.max_mdp_length,
        )
        self._next_deadline_ms: int | None = None  # unknown after a restart: process the batch
        self._cached: tuple[int, pa.Table] | None = None  # (snapshot id, state) last written
        self.last = BatchStats()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        clock = read_batch_clock(Path(self.config.checkpoint_dir), batch_id)
        idle = not clock.has_new_records
        if idle and self._next_deadline_ms is not None and clock.clock_ms < self._next_deadline_ms:
            return  # nothing arrived and nothing can close or expire yet: state N-1 stays current
        started = time.perf_counter()
        # The source validated the records as it read them: the batch is already parsed.
        parsed = ARROW_ROW_SCHEMA.empty_table() if idle else unpack_parsed(batch.toArrow())
        self._process(parsed, batch_id, clock.clock_ms, started)

    def _state_before(self, batch_id: int) -> pa.Table:
        snapshot = newest_snapshot_before(self.state_dir, batch_id)
        if self._cached is not None and snapshot is not None and self._cached[0] == snapshot:
            return self._cached[1]
        return load_state(self.state_dir, snapshot)

    def _process(self, parsed: pa.Table, batch_id: int, clock_ms: int, started: float) -> None:
        seconds = {"read_parse": time.perf_counter() - started}
        new = _widen(parsed, clock_ms)
        tick = time.perf_counter()
        outcome: BatchOutcome = advance_timelines(self._state_before(batch_id), new, clock_ms, self.rules)
        seconds["passes"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if outcome.timelines.num_rows:
            try:
                write_timeline_batch(Path(self.config.output_dir), batch_id, outcome.timelines)
            except OSError as exc:
                raise _write_error(
                    exc, "timeline rows", timelines_path(self.config.output_dir), batch_id, self.config
                ) from exc
        seconds["write"] = time.perf_counter() - tick
        tick = time.perf_counter()
        _send_dead_letters(
            outcome.dead_letters.to_pylist(),
            self.bootstrap_servers,
            self.topics.dead_letters,
            clock_ms,
            self.security,
        )
        seconds["dead_letters"] = time.perf_counter() - tick
        tick = time.perf_counter()
        try:
            save_state(self.state_dir, batch_id, outcome.state)
        except OSError as exc:
            raise _write_error(exc, "state snapshot", self.state_dir, batch_id, self.config) from exc
        self._cached = (batch_id, outcome.state)
        seconds["state"] = time.perf_counter() - tick
        arrivals = pc.min(outcome.state["arrival_clock_ms"]).as_py()
        self._next_deadline_ms = None if arrivals is None else int(arrivals) + self.config.close_after_ms
        self.last = BatchStats(
            batch_id=batch_id,
            input_rows=parsed.num_rows,
            timeline_rows=outcome.timelines.num_rows,
            dead_letters=outcome.dead_letters.num_rows,
            state_rows=outcome.state.num_rows,
            driver_rss_bytes=driver_rss_bytes(),
            seconds=seconds,
        )
        logger.info(
            "timeline batch %d: %d in, %d timeline rows, %d dead letters, %d state rows, clock %d, %s",
            batch_id,
            parsed.num_rows,
            outcome.timelines.num_rows,
            outcome.dead_letters.num_rows,
            outcome.state.num_rows,
            clock_ms,
            {k: round(v, 3) for k, v in seconds.items()},
        )
        if self.on_batch is not None:
            self.on_batch(self.last)


def _widen(parsed: pa.Table, clock_ms: int) -> pa.Table:
    """Parsed rows in the wide `ARROW_ROW_SCHEMA` (extra columns null), arrival clock set."""
    n = parsed.num_rows
    columns = {}
    for f in ARROW_ROW_SCHEMA:
        if f.name == "arrival_clock_ms":
            columns[f.name] = pa.repeat(pa.scalar(clock_ms, pa.int64()), n)
        elif f.name in parsed.column_names:
            columns[f.name] = parsed.column(f.name).cast(f.type)
        else:
            columns[f.name] = pa.nulls(n, f.type)
    return pa.table(columns, schema=ARROW_ROW_SCHEMA)


def _warm_python_workers(spark: SparkSession) -> None:
    """Start Spark's Python workers (one per core) and import what reading needs, in the background
    while the query is planned: Spark reuses idle workers, so the first batch does not wait for them."""
    context = spark.sparkContext
    slots = max(int(context.defaultParallelism), 1)

    def warm() -> None:
        try:
            context.parallelize(range(slots), slots).foreachPartition(import_reading_modules)
        except Exception as exc:  # only a head start is lost: reading starts its own workers
            logger.debug("warming Spark's Python workers failed: %s", exc)

    threading.Thread(target=warm, name="streamrl-warm-python-workers", daemon=True).start()


def start_timeline_query(
    spark: SparkSession,
    config: StreamConfig,
    bootstrap_servers: str,
    topics: Topics,
    *,
    on_batch: Callable[[BatchStats], None] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> StreamingQuery:
    """Start the timeline job; restarting with the same checkpoint_dir resumes exactly once.

    `on_batch` is called on the driver after each processed batch with its `BatchStats` (rows,
    state size, driver RSS, seconds per step)."""
    remove_stale_staging(Path(config.output_dir))
    _warm_python_workers(spark)
    spark.dataSource.register(KafkaEventSource)
    reader = (
        spark.readStream.format(SOURCE_NAME)
        .option("bootstrap_servers", bootstrap_servers)
        .option("topics", f"{topics.decisions},{topics.rewards}")
        .option("parse_events_decisions", topics.decisions)
        .option("parse_events_rewards", topics.rewards)
        .option("kafka_security", security.model_dump_json())
    )
    if config.reward_metrics:
        reader = reader.option("parse_events_reward_metrics", json.dumps(config.reward_metrics))
    if config.max_rows_per_batch is not None:
        reader = reader.option("max_rows_per_batch", str(config.max_rows_per_batch))
    processor = TimelineBatchProcessor(
        config, bootstrap_servers, topics, on_batch=on_batch, security=security
    )
    query = (
        reader.load()
        .writeStream.foreachBatch(processor)
        .option("checkpointLocation", str(config.checkpoint_dir))
        .trigger(processingTime=f"{config.trigger_interval_s} seconds")
        .queryName(f"streamrl_timelines_{topics.decisions}")
        .start()
    )
    return query
