"""A PySpark Python streaming Data Source over Kafka topics, read with kafka-python.

Spark's own Kafka connector is unavailable here, and the broker (Tansu) reports wrong end offsets
through ListOffsets, so the end of each partition is taken from a FETCH response's high watermark.
Each planned offset also carries `clock_ms`, the wall clock when the batch was planned: Spark logs
it in the checkpoint's offset log, so a replayed batch sees the same clock and anything decided
by processing time (closing MDPs, expiring rewards) is decided identically.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadLimit, ReadMaxRows
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from contracts import StreamrlError

SOURCE_NAME = "streamrl_kafka"

KAFKA_RECORD_SCHEMA = StructType(
    [
        StructField("topic", StringType(), False),
        StructField("partition", IntegerType(), False),
        StructField("offset", LongType(), False),
        StructField("key", StringType(), True),
        StructField("value", BinaryType(), True),
        StructField("timestamp", TimestampType(), True),
    ]
)

_CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "group_id": None,
}


class KafkaSourceError(StreamrlError):
    """The Kafka source could not plan or read a batch."""

    def __init__(self, message: str, *, bootstrap_servers: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic


@dataclass(frozen=True, slots=True)
class KafkaRange(InputPartition):
    """Offsets [start, end) of one topic-partition: one Spark task."""

    bootstrap_servers: str
    topic: str
    partition: int
    start: int
    end: int
    poll_timeout_ms: int


def _tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _split_tp_key(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


def _share_rows(available: dict[str, int], max_rows: int) -> dict[str, int]:
    """Split a row budget fairly across partitions (water-filling), so no partition starves."""
    grant = {key: 0 for key in available}
    remaining = max_rows
    pending = sorted((n, key) for key, n in available.items() if n > 0)
    while pending and remaining > 0:
        fair = max(remaining // len(pending), 1)
        n, key = pending.pop(0)
        take = min(n, fair, remaining)
        grant[key] = take
        remaining -= take
    return grant


class KafkaStreamReader(DataSourceStreamReader):
    """Plans micro-batches as per-partition offset ranges; see the module docstring for offsets."""

    def __init__(self, options: dict[str, str]) -> None:
        self.bootstrap_servers = options["bootstrap_servers"]
        self.topics = [t.strip() for t in options["topics"].split(",") if t.strip()]
        max_rows = int(options.get("max_rows_per_batch", "0") or 0)
        self.max_rows_per_batch = max_rows if max_rows > 0 else None
        self.poll_timeout_ms = int(options.get("poll_timeout_ms", "10000"))
        self._consumer: Any = None

    # -- helpers ---------------------------------------------------------------------------------
    def _probe(self) -> Any:
        """A consumer for planning; short-lived so no fetch state (high watermark) outlives a call."""
        if self._consumer is None:
            from kafka import KafkaConsumer

            try:
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    max_partition_fetch_bytes=1024,
                    fetch_max_wait_ms=50,
                    **_CONSUMER_DEFAULTS,
                )
            except Exception as exc:  # kafka-python raises several unrelated types here
                raise KafkaSourceError(
                    f"cannot connect to Kafka at {self.bootstrap_servers!r} to plan a batch: {exc}; "
                    "is the broker up?",
                    bootstrap_servers=self.bootstrap_servers,
                ) from exc
        return self._consumer

    def _topic_partitions(self) -> list[Any]:
        from kafka import TopicPartition

        consumer = self._probe()
        tps = []
        for topic in self.topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise KafkaSourceError(
                    f"topic {topic!r} does not exist on {self.bootstrap_servers!r}; "
                    "create it first (stream.ensure_topics)",
                    bootstrap_servers=self.bootstrap_servers,
                    topic=topic,
                )
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        return tps

    def high_watermarks(self, start: dict[str, int]) -> dict[str, int]:
        """True end offset per partition, from fetch responses (never from ListOffsets).

        Seeks each partition to its start offset and polls until every partition has reported a
        fetch high watermark.
        """
        self._close_probe()  # a fresh consumer: no high watermark left over from an earlier call
        consumer = self._probe()
        tps = self._topic_partitions()
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(start.get(_tp_key(tp.topic, tp.partition), 0), begin.get(tp, 0)))
        deadline = time.monotonic() + self.poll_timeout_ms / 1000
        while True:
            consumer.poll(timeout_ms=100, max_records=1)
            missing = [tp for tp in tps if consumer.highwater(tp) is None]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise KafkaSourceError(
                    f"no fetch response with a high watermark for {missing} from "
                    f"{self.bootstrap_servers!r} within {self.poll_timeout_ms} ms",
                    bootstrap_servers=self.bootstrap_servers,
                )
        return {_tp_key(tp.topic, tp.partition): int(consumer.highwater(tp)) for tp in tps}

    # -- DataSourceStreamReader ------------------------------------------------------------------
    def initialOffset(self) -> dict:
        consumer = self._probe()
        tps = self._topic_partitions()
        begin = consumer.beginning_offsets(tps)
        partitions = {_tp_key(tp.topic, tp.partition): int(begin.get(tp, 0)) for tp in tps}
        return {"partitions": partitions, "clock_ms": 0}

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        start_parts: dict[str, int] = dict(start.get("partitions", {}))
        ends = self.high_watermarks(start_parts)
        available = {key: max(end - start_parts.get(key, 0), 0) for key, end in ends.items()}
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        if max_rows is not None:
            grant = _share_rows(available, max_rows)
            ends = {key: start_parts.get(key, 0) + grant[key] for key in ends}
        clock_ms = max(int(time.time() * 1000), int(start.get("clock_ms", 0)))
        return {"partitions": {**start_parts, **ends}, "clock_ms": clock_ms}

    def getDefaultReadLimit(self) -> ReadLimit:
        if self.max_rows_per_batch is not None:
            return ReadMaxRows(self.max_rows_per_batch)
        return super().getDefaultReadLimit()

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        start_parts = start.get("partitions", {})
        ranges = []
        for key, stop in sorted(end.get("partitions", {}).items()):
            begin = start_parts.get(key, 0)
            if stop > begin:
                topic, partition = _split_tp_key(key)
                ranges.append(
                    KafkaRange(self.bootstrap_servers, topic, partition, begin, stop, self.poll_timeout_ms)
                )
        return ranges

    def read(self, partition: InputPartition) -> Iterator[tuple]:
        assert isinstance(partition, KafkaRange)
        yield from read_range(partition)

    def stop(self) -> None:
        self._close_probe()

    def _close_probe(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def read_range(part: KafkaRange) -> Iterator[tuple]:
    """Yield the records of one offset range as rows of `KAFKA_RECORD_SCHEMA`."""
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(part.topic, part.partition)
    consumer = KafkaConsumer(bootstrap_servers=part.bootstrap_servers, **_CONSUMER_DEFAULTS)
    try:
        consumer.assign([tp])
        consumer.seek(tp, part.start)
        deadline = time.monotonic() + part.poll_timeout_ms / 1000
        position = part.start
        while position < part.end:
            batch = consumer.poll(timeout_ms=200).get(tp, [])
            if batch:
                deadline = time.monotonic() + part.poll_timeout_ms / 1000
            for record in batch:
                if record.offset >= part.end:
                    return
                position = record.offset + 1
                key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
                ts = (
                    datetime.fromtimestamp(record.timestamp / 1000, tz=UTC) if record.timestamp >= 0 else None
                )
                yield (record.topic, record.partition, record.offset, key, record.value, ts)
            # Offsets can have holes (transaction markers): the consumer position is authoritative.
            position = max(position, consumer.position(tp))
            if position < part.end and time.monotonic() > deadline:
                raise KafkaSourceError(
                    f"reading {part.topic}:{part.partition} offsets [{part.start}, {part.end}) stalled at "
                    f"{position} for {part.poll_timeout_ms} ms on {part.bootstrap_servers!r}",
                    bootstrap_servers=part.bootstrap_servers,
                    topic=part.topic,
                )
    finally:
        consumer.close()


class KafkaEventSource(DataSource):
    """`spark.readStream.format("streamrl_kafka")`: options `bootstrap_servers`, `topics` (comma
    list), optional `max_rows_per_batch` and `poll_timeout_ms`."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        return KAFKA_RECORD_SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        for required in ("bootstrap_servers", "topics"):
            if not self.options.get(required):
                raise KafkaSourceError(
                    f"option {required!r} of the {SOURCE_NAME!r} source is missing; "
                    "pass .option('bootstrap_servers', 'host:port').option('topics', 'a,b')",
                    bootstrap_servers=str(self.options.get("bootstrap_servers", "")),
                )
        return KafkaStreamReader(dict(self.options))
