"""Timeline job at volume, on a real local stack (Tansu broker on free ports, Spark local[2]).

Phases, all in one run so the figures share the machine's load:
1. produce a backlog of `--events` events (half decisions in 4-step MDPs, half their rewards);
2. raw consume: confluent-kafka and kafka-python read both topics to the high watermark and
   `json.loads` every value (the bar the job is compared with: the faster of the two);
3. the timeline job on the backlog, from query start until every timeline row is readable;
4. freshness: the job running while events arrive at `--rate` events/s for `--seconds`; per MDP,
   the time from its last decision's reward window + idle timeout closing to its rows being
   readable (p50/p95);
5. bad input: a backlog of `--bad-events` events with 1 % malformed ones (broken JSON, a missing
   field, an out-of-range propensity): every valid row exactly once, every bad one a dead letter.

The last line printed is one JSON object: raw_consume_eps, stream_eps, ratio, freshness_p95_s,
driver_rss_gb (the driver's Python process plus its JVM, peak seen).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from contracts import Topics
from stream import StreamConfig, ensure_topics
from stream._layout import timelines_path

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
STEPS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _topics() -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(
        decisions=f"decisions-{suffix}",
        rewards=f"rewards-{suffix}",
        dead_letters=f"dead_letters-{suffix}",
        metrics=f"metrics-{suffix}",
    )


def _decision(mdp: int, seq: int, stamp: datetime, tag: str) -> dict:
    return {
        "schema_version": 2,
        "action_kind": "discrete",
        "request_id": f"{tag}{mdp}-{seq}",
        "entity_id": f"user-{mdp % 5000}",
        "mdp_id": f"{tag}{mdp}",
        "sequence_number": seq,
        "timestamp": stamp.isoformat(),
        "context_features": {f"f{j}": float((mdp + j * seq) % 17) for j in range(10)},
        "possible_actions": ["a", "b", "c"],
        "action": "abc"[(mdp + seq) % 3],
        "action_probability": 0.4,
        "model_version": "v1",
    }


def _reward(mdp: int, seq: int, stamp: datetime, tag: str) -> dict:
    return {
        "request_id": f"{tag}{mdp}-{seq}",
        "timestamp": stamp.isoformat(),
        "reward": 1.0,
        "metrics": {"click": 1.0},
    }


def _producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def _send(producer, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key.encode(), value=value)
            return
        except BufferError:
            producer.poll(0.05)


def _produce_backlog(bootstrap: str, topics: Topics, n_events: int, tag: str, bad_share: float = 0.0):
    """Decisions and rewards of `n_events // 8` 4-step MDPs; with `bad_share`, that share of the
    events replaced by malformed ones. Returns the expected timeline keys (mdp_id, sequence_number)
    and the expected number of dead letters (malformed events, and the rewards of malformed decisions)."""
    producer = _producer(bootstrap)
    n_mdps = n_events // (2 * STEPS)
    rng = np.random.default_rng(7)
    bad = rng.random(n_mdps * STEPS * 2) < bad_share
    expected: set[tuple[str, int]] = set()
    n_bad = 0
    orphans = 0  # valid rewards of malformed decisions: dead-lettered as unattributed
    i = 0
    for mdp in range(n_mdps):
        for seq in range(STEPS):
            stamp = T0 + timedelta(seconds=seq)
            decision = _decision(mdp, seq, stamp, tag)
            if bad[i]:
                n_bad += 1
                kind = i % 3
                if kind == 0:
                    value = b'{"request_id": "broken'
                elif kind == 1:
                    value = json.dumps({k: v for k, v in decision.items() if k != "mdp_id"}).encode()
                else:
                    value = json.dumps({**decision, "action_probability": 1.5}).encode()
            else:
                value = json.dumps(decision).encode()
                expected.add((decision["mdp_id"], seq))
            _send(producer, topics.decisions, decision["mdp_id"], value)
            i += 1
            reward = _reward(mdp, seq, stamp + timedelta(seconds=0.5), tag)
            orphans += bool(bad[i - 1]) and not bad[i]
            if bad[i]:
                n_bad += 1
                value = b"not json at all"
            else:
                value = json.dumps(reward).encode()
            _send(producer, topics.rewards, reward["request_id"], value)
            i += 1
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the backlog was not fully produced within 120 s")
    return expected, n_bad + orphans


def _raw_consume_confluent(bootstrap: str, topics: Topics, n_expected: int) -> float:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.min.messages": 200_000,
        }
    )
    started = time.perf_counter()
    consumer.assign([TopicPartition(t, p, 0) for t in (topics.decisions, topics.rewards) for p in (0, 1)])
    n, eof = 0, 0
    while eof < 4:
        for message in consumer.consume(num_messages=20_000, timeout=1.0):
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    eof += 1
                continue
            json.loads(message.value())
            n += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    if n != n_expected:
        raise RuntimeError(f"confluent-kafka read {n} records, expected {n_expected}")
    return n / elapsed


def _raw_consume_kafka_python(bootstrap: str, topics: Topics, n_expected: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    started = time.perf_counter()
    tps = [TopicPartition(t, p) for t in (topics.decisions, topics.rewards) for p in (0, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    n = 0
    while True:
        for batch in consumer.poll(timeout_ms=200, max_records=50_000).values():
            for record in batch:
                json.loads(record.value)
                n += 1
        if all(
            consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
            for tp in tps
        ):
            break
    elapsed = time.perf_counter() - started
    consumer.close()
    if n != n_expected:
        raise RuntimeError(f"kafka-python read {n} records, expected {n_expected}")
    return n / elapsed


def _rows_written(output_dir: Path) -> int:
    return sum(
        pq.read_metadata(f).num_rows for f in timelines_path(output_dir).glob("ds=*/batch_id=*/*.parquet")
    )


class _Rss:
    """Peak RSS of this (driver) process and of the Spark JVM it started."""

    def __init__(self, spark) -> None:
        self.jvm_pid = spark.sparkContext._gateway.proc.pid  # the JVM py4j launched for this driver
        self.peak_python = 0
        self.peak_jvm = 0

    @staticmethod
    def _rss(pid: int | str) -> int:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def sample(self) -> None:
        self.peak_python = max(self.peak_python, self._rss("self"))
        self.peak_jvm = max(self.peak_jvm, self._rss(self.jvm_pid))


def _config(root: Path, name: str, **overrides) -> StreamConfig:
    values = {
        "output_dir": root / name / "out",
        "checkpoint_dir": root / name / "checkpoint",
        "attribution_window_s": 1.0,
        "mdp_idle_timeout_s": 1.0,
        "trigger_interval_s": 1.0,
        **overrides,
    }
    return StreamConfig(**values)


def _run_backlog(
    spark,
    config: StreamConfig,
    bootstrap: str,
    topics: Topics,
    n_rows: int,
    rss: _Rss,
    timeout_s: float,
    more=None,
):
    """Run the job until `n_rows` timeline rows are readable (and `more()` holds); seconds and batch stats."""
    from stream import start_timeline_query

    stats = []
    started = time.perf_counter()
    query = start_timeline_query(spark, config, bootstrap, topics, on_batch=stats.append)
    try:
        while _rows_written(config.output_dir) < n_rows or (more is not None and not more()):
            rss.sample()
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(
                    f"only {_rows_written(config.output_dir)} of {n_rows} rows after {timeout_s} s"
                )
            if query.exception() is not None:
                raise RuntimeError(f"the timeline job failed: {query.exception()}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        query.stop()
        query.awaitTermination(60)
    return elapsed, stats


def _produce_at_rate(bootstrap: str, decisions: str, rewards: str, rate: float, seconds: float, out) -> None:
    """Child process: 4-step MDPs with their rewards at `rate` events/s, stamped now; sends back
    (events, seconds, {mdp_id: wall time its last decision was produced})."""
    producer = _producer(bootstrap)
    per_mdp = 2 * STEPS
    mdps_per_tick = max(1, round(rate * 0.1 / per_mdp))  # produce in 100 ms ticks
    last: dict[str, float] = {}
    start = time.time()
    mdp = tick = 0
    while time.time() - start < seconds:
        for _ in range(mdps_per_tick):
            now = datetime.now(UTC)
            for seq in range(STEPS):
                d = _decision(mdp, seq, now, "f")
                _send(producer, decisions, d["mdp_id"], json.dumps(d).encode())
                _send(producer, rewards, d["request_id"], json.dumps(_reward(mdp, seq, now, "f")).encode())
            last[f"f{mdp}"] = time.time()
            mdp += 1
        producer.poll(0)
        tick += 1
        pause = start + tick * 0.1 - time.time()
        if pause > 0:
            time.sleep(pause)
    producer.flush(60)
    out.send((mdp * per_mdp, time.time() - start, last))


def _freshness(
    spark, root: Path, bootstrap: str, rate: float, seconds: float, rss: _Rss
) -> tuple[list[float], list]:
    """Produce at `rate` events/s while the job runs; per MDP, seconds from its close deadline to readable."""
    from stream import start_timeline_query

    topics = _topics()
    ensure_topics(bootstrap, topics, partitions=2)
    config = _config(root, "fresh")
    close_after_s = config.attribution_window_s + config.mdp_idle_timeout_s
    stats: list = []
    query = start_timeline_query(spark, config, bootstrap, topics, on_batch=stats.append)
    last_decision: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        known: set[str] = set()
        root_dir = timelines_path(config.output_dir)
        while not done.is_set():
            for f in root_dir.glob("ds=*/batch_id=*/*.parquet"):
                if str(f) in known:
                    continue
                try:
                    ids = pq.read_table(f, columns=["mdp_id"]).column("mdp_id").to_pylist()
                except OSError:
                    continue
                now = time.time()
                known.add(str(f))
                for mdp in ids:
                    seen.setdefault(mdp, now)
            rss.sample()
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        time.sleep(8.0)  # first batches (Python workers start) before the clock runs
        watcher.start()
        # A separate process produces, so the driver's work does not share its interpreter lock.
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(
            target=_produce_at_rate, args=(bootstrap, topics.decisions, topics.rewards, rate, seconds, send)
        )
        worker.start()
        produced, produced_s, times = receive.recv()
        worker.join(60)
        last_decision.update(times)
        print(f"   freshness: produced {produced:,} events in {produced_s:.1f} s "
              f"({produced / produced_s:,.0f} events/s)", flush=True)  # fmt: skip
        deadline = time.time() + 120
        while len(seen) < len(last_decision) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        done.set()
        query.stop()
        query.awaitTermination(60)
    missing = len(last_decision) - len(seen)
    if missing:
        print(f"   freshness: {missing} MDPs never became readable", flush=True)
    delays = [seen[m] - (t + close_after_s) for m, t in last_decision.items() if m in seen]
    return delays, stats


def _dead_letters(bootstrap: str, topic: str) -> list[dict]:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    letters, eof, deadline = [], 0, time.time() + 60
    while eof < 2 and time.time() < deadline:
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error() is not None:
                eof += message.error().code() == KafkaError._PARTITION_EOF
                continue
            letters.append({"key": message.key().decode(), **json.loads(message.value())})
    consumer.close()
    return letters


def _batch_line(stats: list) -> str:
    busy = [s for s in stats if s.input_rows]
    if not busy:
        return "no batches"
    total = {k: sum(s.seconds.get(k, 0.0) for s in busy) for k in busy[0].seconds}
    return f"{len(busy)} batches, max state {max(s.state_rows for s in stats):,} rows; seconds " + ", ".join(
        f"{k} {v:.1f}" for k, v in total.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stream_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000, help="backlog size (default 400,000)")
    parser.add_argument("--bad-events", type=int, default=None, help="bad-input backlog (default --events)")
    parser.add_argument("--rate", type=float, default=10_000.0, help="freshness phase events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="freshness phase length")
    args = parser.parse_args(argv or [])
    bad_events = args.events if args.bad_events is None else args.bad_events

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from infra.stack import LocalStack
    from infra.stack_config import StackConfig
    from stream.spark import build_spark_session

    root = Path(tempfile.mkdtemp(prefix="stream-throughput-"))
    stack = LocalStack(
        StackConfig(broker_port=_free_port(), redis_port=_free_port(), state_dir=root / "stack")
    )
    stack.up()
    spark = None
    try:
        bootstrap = stack.bootstrap_servers
        topics = _topics()
        ensure_topics(bootstrap, topics, partitions=2)
        started = time.perf_counter()
        expected, _ = _produce_backlog(bootstrap, topics, args.events, "m")
        n_events = len(expected) * 2
        print(
            f"   produced {n_events:,} events (confluent-kafka): {n_events / (time.perf_counter() - started):,.0f}/s"
        )
        confluent = _raw_consume_confluent(bootstrap, topics, n_events)
        kafka_python = _raw_consume_kafka_python(bootstrap, topics, n_events)
        raw = max(confluent, kafka_python)
        print(
            f"   raw consume + json.loads: confluent-kafka {confluent:,.0f}/s, kafka-python {kafka_python:,.0f}/s"
        )

        session_started = time.perf_counter()
        spark = build_spark_session(
            "local[2]",
            "stream-throughput",
            {
                "spark.driver.memory": "2g",
                "spark.local.dir": str(root / "spark"),
                "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
            },
        )
        print(f"   spark session: {time.perf_counter() - session_started:.1f} s")
        rss = _Rss(spark)
        config = _config(root, "backlog")
        elapsed, stats = _run_backlog(spark, config, bootstrap, topics, len(expected), rss, timeout_s=900)
        stream_eps = n_events / elapsed
        print(f"   timeline job: {n_events:,} events → {len(expected):,} rows readable in {elapsed:.1f} s from "
              f"query start: {stream_eps:,.0f} events/s ({_batch_line(stats)})")  # fmt: skip

        delays, fresh_stats = _freshness(spark, root, bootstrap, args.rate, args.seconds, rss)
        p50, p95 = (float(np.percentile(delays, q)) for q in (50, 95)) if delays else (float("nan"),) * 2
        print(f"   freshness at {args.rate:,.0f} events/s: p50 {p50:.1f} s, p95 {p95:.1f} s after the window "
              f"and idle timeout closed ({len(delays):,} MDPs; {_batch_line(fresh_stats)})")  # fmt: skip

        bad_topics = _topics()
        ensure_topics(bootstrap, bad_topics, partitions=2)
        bad_expected, n_bad = _produce_backlog(bootstrap, bad_topics, bad_events, "b", bad_share=0.01)
        bad_config = _config(root, "bad")
        last_check = [0.0]

        def all_dead_letters() -> bool:
            if time.time() - last_check[0] < 3.0:
                return False
            last_check[0] = time.time()
            return len({x["key"] for x in _dead_letters(bootstrap, bad_topics.dead_letters)}) >= n_bad

        bad_elapsed, bad_stats = _run_backlog(
            spark, bad_config, bootstrap, bad_topics, len(bad_expected), rss, 1800, all_dead_letters
        )
        from stream import load_timelines

        frame = load_timelines(bad_config.output_dir)
        keys = list(zip(frame["mdp_id"], frame["sequence_number"], strict=True))
        letters = _dead_letters(bootstrap, bad_topics.dead_letters)
        unique_letters = {letter["key"] for letter in letters}
        reasons_ok = all(letter["reason"] for letter in letters)
        exact = len(keys) == len(set(keys)) and set(keys) == bad_expected
        print(f"   bad input: {bad_events:,} events, {n_bad:,} malformed; {len(keys):,} rows "
              f"({'each valid one exactly once' if exact else 'MISMATCH'}), {len(unique_letters):,} dead letters "
              f"({len(letters):,} delivered, reasons {'all set' if reasons_ok else 'MISSING'}) in {bad_elapsed:.1f} s")  # fmt: skip
        if not exact or len(unique_letters) != n_bad or not reasons_ok:
            print(f"   bad input FAILED: expected {len(bad_expected):,} rows and {n_bad:,} dead letters")
        print(f"   bad input batches: {_batch_line(bad_stats)}")

        driver_gb = (rss.peak_python + rss.peak_jvm) / 1e9
        print(f"   driver RSS peak: python {rss.peak_python / 1e9:.2f} GB + JVM {rss.peak_jvm / 1e9:.2f} GB")
        print(
            json.dumps(
                {
                    "raw_consume_eps": round(raw),
                    "stream_eps": round(stream_eps),
                    "ratio": round(stream_eps / raw, 3),
                    "freshness_p95_s": round(p95, 2),
                    "driver_rss_gb": round(driver_gb, 2),
                }
            )
        )
    finally:
        if spark is not None:
            spark.stop()
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
