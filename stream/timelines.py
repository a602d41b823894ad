"""The timeline job: Kafka decisions and rewards → validated, reward-attributed, closed MDPs → parquet.

Per micro-batch N (clock C = the `clock_ms` Spark logged for N):
1. validate every record (bad ones → dead-letter topic, each on its own);
2. merge new decisions into the open ones from state snapshot N-1, collapsing duplicate
   (mdp_id, sequence_number); decisions for an MDP already closed are dead-lettered as late;
3. close every MDP whose last decision arrived at least attribution window + idle timeout before C:
   attribute rewards by request id (reward time ≤ decision time + window), lead over sequence
   number, keep the last step as a terminal row, write `timelines/ds=…/batch_id=N/`;
4. write state snapshot N. Outputs of N overwrite only N's own paths, so a replay is harmless.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from contracts import DeadLetterRecord, StreamrlError, Topics
from stream._layout import TIMELINE_COLUMNS, timelines_path
from stream._parse import KIND_DEAD, KIND_DECISION, KIND_REWARD, PARSED_SCHEMA, make_parser
from stream._rows import (
    KIND_CLOSED,
    KIND_TIMELINE,
    REASON_LATE_DECISION,
    ROW_SCHEMA,
    STATE_KINDS,
    by_key,
    make_attribute_rewards,
    make_close_mdps,
)
from stream._state import load_state, read_batch_clock, save_state
from stream.config import StreamConfig
from stream.kafka_source import SOURCE_NAME, KafkaEventSource

logger = logging.getLogger(__name__)


class DeadLetterError(StreamrlError):
    """Dead letters could not be delivered; the batch fails and is retried from the checkpoint."""

    def __init__(self, message: str, *, topic: str, count: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.count = count


def _send_dead_letters(rows: list[Any], bootstrap_servers: str, topic: str, clock_ms: int) -> None:
    """Deliver dead letters (at least once; keyed by source position so readers can dedupe)."""
    if not rows:
        return
    from kafka import KafkaProducer

    received_at = datetime.fromtimestamp(clock_ms / 1000, tz=UTC)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5
    )
    try:
        futures = []
        for row in rows:
            record = DeadLetterRecord(
                source_topic=row.src_topic,
                source_partition=row.src_partition,
                source_offset=row.src_offset,
                reason=row.reason,
                payload=row.payload or "",
                received_at=received_at,
            )
            key = f"{row.src_topic}:{row.src_partition}:{row.src_offset}".encode()
            futures.append(producer.send(topic, key=key, value=record.to_json_bytes()))
        producer.flush(timeout=30)
        failed = [f for f in futures if f.failed() or not f.is_done]
    finally:
        producer.close(timeout=5)
    if failed:
        raise DeadLetterError(
            f"{len(failed)} of {len(rows)} dead letters were not delivered to topic {topic!r} at "
            f"{bootstrap_servers!r}; the batch will be retried from the checkpoint",
            topic=topic,
            count=len(failed),
        )


class TimelineBatchProcessor:
    """The `foreachBatch` function; remembers the next deadline to skip idle batches cheaply."""

    def __init__(self, config: StreamConfig, bootstrap_servers: str, topics: Topics) -> None:
        self.config = config
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.state_dir = Path(config.output_dir) / "state"
        self._next_deadline_ms: int | None = None  # unknown after a restart: process the batch

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        clock = read_batch_clock(Path(self.config.checkpoint_dir), batch_id)
        idle = not clock.has_new_records
        if idle and self._next_deadline_ms is not None and clock.clock_ms < self._next_deadline_ms:
            return  # nothing arrived and nothing can close or expire yet: state N-1 stays current
        parsed = batch.mapInArrow(
            make_parser(self.topics.decisions, self.topics.rewards, self.config.reward_metrics),
            schema=PARSED_SCHEMA,
        ).persist()
        try:
            self._process(batch.sparkSession, parsed, batch_id, clock.clock_ms)
        finally:
            parsed.unpersist()

    def _process(self, spark: SparkSession, parsed: DataFrame, batch_id: int, clock_ms: int) -> None:
        config = self.config
        prev = load_state(spark, self.state_dir, batch_id)
        closed = prev.filter(F.col("kind") == KIND_CLOSED)
        retention_ms = round(config.closed_mdp_retention_s * 1000)
        new = _widen(parsed).withColumn("arrival_clock_ms", F.lit(clock_ms).cast("long"))
        new_decisions = new.filter(F.col("kind") == KIND_DECISION)
        closed_ids = F.broadcast(closed.select("mdp_id"))
        late = new_decisions.join(closed_ids, "mdp_id", "left_semi").withColumns(
            {"kind": F.lit(KIND_DEAD), "reason": F.lit(REASON_LATE_DECISION)}
        )
        events = (
            prev.filter(F.col("kind").isin(KIND_DECISION, KIND_REWARD))
            .unionByName(new_decisions.join(closed_ids, "mdp_id", "left_anti").select(*ROW_SCHEMA.names))
            .unionByName(new.filter(F.col("kind") == KIND_REWARD))
        )
        attribute = make_attribute_rewards(clock_ms, config.attribution_window_s, config.close_after_ms)
        attributed = events.repartition("request_id").mapInArrow(by_key("request_id", attribute), ROW_SCHEMA)
        in_mdp = (F.col("kind") != KIND_DEAD) & F.col("mdp_id").isNotNull()
        closed_now = (
            attributed.filter(in_mdp)
            .repartition("mdp_id")
            .mapInArrow(
                by_key("mdp_id", make_close_mdps(clock_ms, config.close_after_ms, config.max_mdp_length)),
                ROW_SCHEMA,
            )
        )
        out = (
            closed_now.unionByName(attributed.filter(~in_mdp))
            .unionByName(new.filter(F.col("kind") == KIND_DEAD))
            .unionByName(late.select(*ROW_SCHEMA.names))
            .unionByName(closed.filter(F.col("closed_clock_ms") + F.lit(retention_ms) > F.lit(clock_ms)))
        ).persist()
        try:
            (
                out.filter(F.col("kind") == KIND_TIMELINE)
                .select(*TIMELINE_COLUMNS, F.lit(batch_id).cast("long").alias("batch_id"))
                .write.mode("overwrite")
                .option("partitionOverwriteMode", "dynamic")
                .partitionBy("ds", "batch_id")
                .parquet(str(timelines_path(config.output_dir)))
            )
            dead_rows = (
                out.filter(F.col("kind") == KIND_DEAD)
                .select("src_topic", "src_partition", "src_offset", "payload", "reason")
                .orderBy("src_topic", "src_partition", "src_offset")
                .collect()
            )
            _send_dead_letters(dead_rows, self.bootstrap_servers, self.topics.dead_letters, clock_ms)
            state = out.filter(F.col("kind").isin(*STATE_KINDS))
            save_state(self.state_dir, batch_id, state)
            earliest = state.agg(F.min("arrival_clock_ms")).first()[0]
            self._next_deadline_ms = None if earliest is None else int(earliest) + config.close_after_ms
            logger.info("timeline batch %d: %d dead letters, clock %d", batch_id, len(dead_rows), clock_ms)
        finally:
            out.unpersist()


def _widen(parsed: DataFrame) -> DataFrame:
    """Parsed rows in the wide `ROW_SCHEMA` (extra columns null)."""
    present = set(parsed.columns)
    return parsed.select(
        *[
            F.col(f.name) if f.name in present else F.lit(None).cast(f.dataType).alias(f.name)
            for f in ROW_SCHEMA.fields
        ]
    )


def start_timeline_query(
    spark: SparkSession, config: StreamConfig, bootstrap_servers: str, topics: Topics
) -> StreamingQuery:
    """Start the timeline job; restarting with the same checkpoint_dir resumes exactly once."""
    spark.dataSource.register(KafkaEventSource)
    reader = (
        spark.readStream.format(SOURCE_NAME)
        .option("bootstrap_servers", bootstrap_servers)
        .option("topics", f"{topics.decisions},{topics.rewards}")
    )
    if config.max_rows_per_batch is not None:
        reader = reader.option("max_rows_per_batch", str(config.max_rows_per_batch))
    processor = TimelineBatchProcessor(config, bootstrap_servers, topics)
    return (
        reader.load()
        .writeStream.foreachBatch(processor)
        .option("checkpointLocation", str(config.checkpoint_dir))
        .trigger(processingTime=f"{config.trigger_interval_s} seconds")
        .queryName(f"streamrl_timelines_{topics.decisions}")
        .start()
    )
