"""A PySpark Python streaming Data Source over Kafka topics.

Batches are planned with kafka-python (high watermarks from fetch responses) and read with
confluent-kafka (librdkafka: ~5× kafka-python's consume rate), yielding Arrow record batches, so
no record passes through a Python tuple on its way to Spark. Offsets live only in Spark's
checkpoint: no consumer group, nothing committed to the broker.

Spark's own Kafka connector is unavailable here, and the broker (Tansu) reports wrong end offsets
through ListOffsets, so the end of each partition is taken from a FETCH response's high watermark.
Each planned offset also carries `clock_ms`, the wall clock when the batch was planned: Spark logs
it in the checkpoint's offset log, so a replayed batch sees the same clock and anything decided
by processing time (closing MDPs, expiring rewards) is decided identically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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

from contracts import KafkaSecurity, StreamrlError

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
    # librdkafka security settings resolved on the driver (the password included): executors need
    # not see the variable or file that holds it. Left out of the repr, so never logged.
    client_settings: tuple[tuple[str, str], ...] = field(default=(), repr=False)


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
        self.security = KafkaSecurity.model_validate_json(options.get("kafka_security") or "{}")
        self._client_settings = tuple(self.security.client_settings("confluent").items())
        self.parse = _parse_options(options)
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
                    **self.security.client_settings("kafka_python"),
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
                    KafkaRange(
                        self.bootstrap_servers,
                        topic,
                        partition,
                        begin,
                        stop,
                        self.poll_timeout_ms,
                        self._client_settings,
                    )
                )
        return ranges

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, KafkaRange)
        if self.parse is None:
            yield from read_range_arrow(partition)
            return
        from stream._parse import make_batch_parser, pack_parsed

        parse = make_batch_parser(*self.parse)
        for batch in read_range_arrow(partition, timestamps=False):
            first_offset = batch.column("offset")[0].as_py()
            parsed = parse(pa.Table.from_batches([batch]))
            yield pack_parsed(partition.topic, partition.partition, first_offset, parsed)

    def stop(self) -> None:
        self._close_probe()

    def _close_probe(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


_ARROW_RECORD_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), False),
        pa.field("partition", pa.int32(), False),
        pa.field("offset", pa.int64(), False),
        pa.field("key", pa.string()),
        pa.field("value", pa.binary()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
    ]
)
_READ_CHUNK = 20_000  # records per consume() call and per Arrow batch


def _record_batch(topic: str, partition: int, messages: list[Any], timestamps: bool) -> pa.RecordBatch:
    n = len(messages)
    offsets = [m.offset() for m in messages]
    keys = [m.key() for m in messages]
    key_array = pa.array(keys, pa.binary())
    try:
        key_array = key_array.cast(pa.string())
    except pa.ArrowInvalid:
        key_array = pa.array(
            [k.decode("utf-8", errors="replace") if k is not None else None for k in keys], pa.string()
        )
    if timestamps:
        stamps = [m.timestamp() for m in messages]
        millis = pa.array([ms if kind != 0 and ms >= 0 else None for kind, ms in stamps], pa.int64())
    else:
        millis = pa.nulls(n, pa.int64())
    return pa.RecordBatch.from_arrays(
        [
            pa.repeat(pa.scalar(topic, pa.string()), n),
            pa.repeat(pa.scalar(partition, pa.int32()), n),
            pa.array(offsets, pa.int64()),
            key_array,
            pa.array([m.value() for m in messages], pa.binary()),
            pc.multiply(millis, 1000).cast(pa.timestamp("us", tz="UTC")),
        ],
        schema=_ARROW_RECORD_SCHEMA,
    )


def read_range_arrow(part: KafkaRange, *, timestamps: bool = True) -> Iterator[pa.RecordBatch]:
    """Yield the records of one offset range as Arrow batches of `KAFKA_RECORD_SCHEMA` (without
    `timestamps`, that column is null: parsing does not need it)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": part.bootstrap_servers,
            "group.id": "streamrl-timelines-unused",  # required by librdkafka; never joined nor committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.min.messages": 200_000,
            "fetch.wait.max.ms": 50,
        }
        | dict(part.client_settings)
    )
    try:
        consumer.assign([TopicPartition(part.topic, part.partition, part.start)])
        deadline = time.monotonic() + part.poll_timeout_ms / 1000
        position = part.start
        while position < part.end:
            messages = consumer.consume(num_messages=_READ_CHUNK, timeout=0.2)
            records = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        position = max(position, message.offset())
                        continue
                    raise KafkaSourceError(
                        f"reading {part.topic}:{part.partition} at {position} from "
                        f"{part.bootstrap_servers!r} failed: {error}",
                        bootstrap_servers=part.bootstrap_servers,
                        topic=part.topic,
                    )
                if message.offset() >= part.end:
                    position = part.end
                    break
                records.append(message)
                position = message.offset() + 1
            if records:
                deadline = time.monotonic() + part.poll_timeout_ms / 1000
                yield _record_batch(part.topic, part.partition, records, timestamps)
            if position < part.end and time.monotonic() > deadline:
                raise KafkaSourceError(
                    f"reading {part.topic}:{part.partition} offsets [{part.start}, {part.end}) stalled at "
                    f"{position} for {part.poll_timeout_ms} ms on {part.bootstrap_servers!r}",
                    bootstrap_servers=part.bootstrap_servers,
                    topic=part.topic,
                )
    finally:
        consumer.close()


def import_reading_modules(_: Iterable[Any]) -> None:
    """What a reading task imports, for a warm-up task to import into Spark's Python workers first."""
    import confluent_kafka  # noqa: F401

    import stream._parse  # noqa: F401


def _parse_options(options: dict[str, str]) -> tuple[str, str, dict[str, float] | None] | None:
    """(decisions topic, rewards topic, reward weights) when the source parses events, else None."""
    if not options.get("parse_events_decisions"):
        return None
    weights = options.get("parse_events_reward_metrics")
    return (
        options["parse_events_decisions"],
        options["parse_events_rewards"],
        json.loads(weights) if weights else None,
    )


class KafkaEventSource(DataSource):
    """`spark.readStream.format("streamrl_kafka")`: options `bootstrap_servers`, `topics` (comma
    list), optional `max_rows_per_batch`, `poll_timeout_ms` and `kafka_security` (a
    `KafkaSecurity` as JSON: it names where the password is, never the password).

    With `parse_events_decisions` and `parse_events_rewards` (topic names; optional
    `parse_events_reward_metrics`, JSON weights) the source validates the records as it reads them
    and its rows are `stream._parse.PACKED_SCHEMA`: one row per parsed chunk of a partition, the
    chunk's `PARSED_SCHEMA` rows as an Arrow IPC stream (`stream._parse.unpack_parsed` opens them)."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        if _parse_options(dict(self.options)) is not None:
            from stream._parse import PACKED_SCHEMA

            return PACKED_SCHEMA
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
