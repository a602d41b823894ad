"""The timeline job end to end on a real broker and a real SparkSession.

Windows are short (attribution 1 s, idle 1 s, trigger 0.5 s) so MDPs close within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import confluent_kafka
import pytest
from kafka import KafkaProducer
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from contracts import DecisionEvent, RewardEvent, Topics
from stream import EventLogger, StreamConfig, load_timelines, start_timeline_query
from stream.kafka_source import KafkaStreamReader
from tests.helpers import consume_all

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def _decision(mdp: str, seq: int, *, action: str = "a", features: dict | None = None) -> DecisionEvent:
    return DecisionEvent(
        request_id=f"{mdp}-{seq}",
        entity_id=f"user-{mdp}",
        mdp_id=mdp,
        sequence_number=seq,
        timestamp=T0 + timedelta(seconds=seq),
        context_features=features if features is not None else {"x": float(seq), "missing": None},
        possible_actions=["a", "b"],
        action=action,
        action_probability=0.5,
        model_version="v1",
    )


def _reward(request_id: str, after_s: float, reward: float, metrics: dict | None = None) -> RewardEvent:
    seq = int(request_id.rsplit("-", 1)[1])
    return RewardEvent(
        request_id=request_id,
        timestamp=T0 + timedelta(seconds=seq + after_s),
        reward=reward,
        metrics=metrics or {},
    )


class _Producer:
    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def decision(self, event: DecisionEvent | bytes, key: str = "k") -> None:
        value = event if isinstance(event, bytes) else event.to_json_bytes()
        self.producer.send(self.topics.decisions, key=key.encode(), value=value)

    def reward(self, event: RewardEvent | bytes, key: str = "k") -> None:
        value = event if isinstance(event, bytes) else event.to_json_bytes()
        self.producer.send(self.topics.rewards, key=key.encode(), value=value)

    def flush(self) -> None:
        self.producer.flush()


def _config(tmp_path: Path) -> StreamConfig:
    return StreamConfig(
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "checkpoint",
        attribution_window_s=1.0,
        mdp_idle_timeout_s=1.0,
        trigger_interval_s=0.5,
    )


def _wait_for_rows(output_dir: Path, n_rows: int, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = load_timelines(output_dir)
        if len(frame) >= n_rows:
            return frame
        time.sleep(0.5)
    raise AssertionError(
        f"expected {n_rows} timeline rows within {timeout_s} s, got {len(load_timelines(output_dir))}"
    )


def _stop(query) -> None:
    query.stop()
    query.awaitTermination(30)


def test_timelines_attribute_rewards_and_dead_letter_invalid_events(local_stack, topics, spark, tmp_path):
    """(a) exact rows for a few MDPs with rewards; (b) every kind of invalid event is dead-lettered."""
    bootstrap = local_stack.bootstrap_servers
    p = _Producer(bootstrap, topics)
    # Reward arriving before its decision (processing order), within the window.
    p.reward(_reward("m1-2", 0.5, 4.0))
    for seq in (0, 1, 2):
        p.decision(_decision("m1", seq, action="a" if seq != 1 else "b"), key="m1")
    p.decision(_decision("m1", 1, action="b"), key="m1")  # duplicate (mdp_id, seq): collapses
    p.reward(_reward("m1-0", 0.2, 1.0, {"click": 1.0}))
    p.reward(_reward("m1-0", 0.9, 2.0, {"click": 1.0, "revenue": 0.5}))
    p.reward(_reward("m1-1", 5.0, 100.0))  # beyond the 1 s window: not attributed
    p.decision(_decision("m2", 5, features={"y": 2.0}), key="m2")  # one-step MDP: terminal only
    # Invalid events of each kind.
    valid = json.loads(_decision("bad", 0).to_json_bytes())
    p.decision(b"{not json", key="bad")
    p.decision(json.dumps({k: v for k, v in valid.items() if k != "mdp_id"}).encode(), key="bad")
    p.decision(json.dumps({**valid, "action_probability": 1.5}).encode(), key="bad")
    p.decision(json.dumps({**valid, "action": "zzz"}).encode(), key="bad")
    p.decision(json.dumps({**valid, "schema_version": 9}).encode(), key="bad")
    p.decision(json.dumps({**valid, "surprise": 1}).encode(), key="bad")
    p.reward(
        json.dumps({"request_id": "m2-5", "timestamp": "2026-11-23T10:00:05Z", "reward": "lots"}).encode()
    )
    p.flush()

    query = start_timeline_query(spark, _config(tmp_path), bootstrap, topics)
    try:
        frame = _wait_for_rows(tmp_path / "out", 4)
        time.sleep(1.0)
        # A decision for a closed MDP is late.
        p.decision(_decision("m2", 6), key="m2")
        p.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reasons = [json.loads(r.value)["reason"] for r in consume_all(bootstrap, topics.dead_letters)]
            if any(r.startswith("late: mdp") for r in reasons):
                break
            time.sleep(0.5)
    finally:
        _stop(query)

    frame = load_timelines(tmp_path / "out")
    assert list(frame["mdp_id"]) == ["m1", "m1", "m1", "m2"]
    m1 = frame[frame["mdp_id"] == "m1"].reset_index(drop=True)
    assert list(m1["sequence_number"]) == [0, 1, 2]
    assert list(m1["sequence_number_ordinal"]) == [1, 2, 3]
    assert list(m1["reward"]) == [3.0, 0.0, 4.0]
    assert list(m1["reward_observed"]) == [True, False, True]
    assert m1["metrics"][0] == {"click": 2.0, "revenue": 0.5}
    assert m1["metrics"][1] == {}
    assert m1["state_features"][0] == {"x": 0.0}  # None features are absent keys
    assert list(m1["next_state_features"]) == [{"x": 1.0}, {"x": 2.0}, {}]
    assert list(m1["action"]) == ["a", "b", "a"]
    assert list(m1["next_action"]) == ["b", "a", None]
    assert list(m1["possible_next_actions"]) == [["a", "b"], ["a", "b"], []]
    assert list(m1["time_diff"]) == [1, 1, 0]
    assert list(m1["time_since_first"]) == [0, 1, 2]
    assert list(m1["not_terminal"]) == [True, True, False]
    m2 = frame[frame["mdp_id"] == "m2"].iloc[0]
    assert (m2["not_terminal"], m2["time_diff"], m2["next_action"], m2["reward"]) == (False, 0, None, 0.0)
    assert m2["ds"] == "2026-11-23" and m2["timestamp"] == T0 + timedelta(seconds=5)

    letters = [json.loads(r.value) for r in consume_all(bootstrap, topics.dead_letters)]
    by_reason = {letter["reason"]: letter for letter in letters}
    reasons = list(by_reason)

    def one(fragment: str) -> dict:
        hits = [r for r in reasons if fragment in r]
        assert len(hits) == 1, (fragment, reasons)
        return by_reason[hits[0]]

    assert one("Invalid JSON")["payload"] == "{not json"
    one("mdp_id: Field required")
    one("<record>: Value error, action_probability must be in (0, 1], got 1.5")
    one("not among possible_actions")
    one("schema_version: Input should be 1 or 2")
    one("surprise: Extra inputs are not permitted")
    assert one("reward: Input should be a valid number")["source_topic"] == topics.rewards
    late_reward = one("after its decision's attribution window")
    assert json.loads(late_reward["payload"])["reward"] == 100.0
    late_decision = one("late: mdp already closed")
    assert json.loads(late_decision["payload"])["sequence_number"] == 6
    assert len(letters) == 9


def test_restart_from_checkpoint_is_exactly_once(local_stack, topics, spark, tmp_path):
    """(c) stop mid-stream, produce more, restart from the same checkpoint: no loss, no duplicates."""
    bootstrap = local_stack.bootstrap_servers
    config = _config(tmp_path)
    p = _Producer(bootstrap, topics)
    for mdp in range(20):
        for seq in range(3):
            p.decision(_decision(f"a{mdp}", seq), key=f"a{mdp}")
            p.reward(_reward(f"a{mdp}-{seq}", 0.1, 1.0))
    p.flush()
    query = start_timeline_query(spark, config, bootstrap, topics)
    try:
        _wait_for_rows(config.output_dir, 1)
        for mdp in range(20):  # arrives while the query runs and may be cut off by the stop
            for seq in range(2):
                p.decision(_decision(f"b{mdp}", seq), key=f"b{mdp}")
        p.flush()
    finally:
        _stop(query)
    for mdp in range(10):  # produced while the query is down
        p.decision(_decision(f"c{mdp}", 0), key=f"c{mdp}")
        p.reward(_reward(f"c{mdp}-0", 0.1, 2.0))
    p.flush()
    # What a job killed mid-write leaves: a staging folder with a partial file. The restart removes it.
    ds_folder = next((config.output_dir / "timelines").glob("ds=*"))
    stale = ds_folder / ".staging-7-killed"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"PAR1 cut short")
    query = start_timeline_query(spark, config, bootstrap, topics)
    assert not stale.exists()
    try:
        frame = _wait_for_rows(config.output_dir, 60 + 40 + 10)
        time.sleep(2.0)  # a few more batches: nothing may be emitted twice
    finally:
        _stop(query)

    frame = load_timelines(config.output_dir)
    assert len(frame) == 110
    assert not frame.duplicated(["mdp_id", "sequence_number"]).any()
    assert frame.groupby("mdp_id").size().to_dict() == {
        **{f"a{i}": 3 for i in range(20)},
        **{f"b{i}": 2 for i in range(20)},
        **{f"c{i}": 1 for i in range(10)},
    }
    assert frame[frame["mdp_id"].str.startswith("a")]["reward"].sum() == 60.0
    assert frame[frame["mdp_id"].str.startswith("c")]["reward"].sum() == 20.0
    assert consume_all(bootstrap, topics.dead_letters) == []


def test_source_plans_batches_from_fetch_high_watermarks(local_stack, topics):
    """(d) latestOffset equals the produced count per partition (ListOffsets on Tansu would say 1)."""
    bootstrap = local_stack.bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for i in range(57):
        producer.send(topics.decisions, value=b"x", partition=i % 2)
    for _ in range(5):
        producer.send(topics.rewards, value=b"y", partition=1)
    producer.flush()
    producer.close()
    reader = KafkaStreamReader(
        {"bootstrap_servers": bootstrap, "topics": f"{topics.decisions},{topics.rewards}"}
    )
    try:
        start = reader.initialOffset()
        assert set(start["partitions"].values()) == {0}
        end = reader.latestOffset(start, ReadAllAvailable())
        assert end["partitions"] == {
            f"{topics.decisions}:0": 29,
            f"{topics.decisions}:1": 28,
            f"{topics.rewards}:0": 0,
            f"{topics.rewards}:1": 5,
        }
        assert end["clock_ms"] >= int(time.time() * 1000) - 60_000
        limited = reader.latestOffset(start, ReadMaxRows(10))
        assert sum(limited["partitions"].values()) == 10
        assert min(v for k, v in limited["partitions"].items() if not k.endswith(f"{topics.rewards}:0")) >= 3
        rows = [
            row
            for part in reader.partitions(start, end)
            for batch in reader.read(part)
            for row in batch.to_pylist()
        ]
        assert len(rows) == 62
        assert len({(r["topic"], r["partition"], r["offset"]) for r in rows}) == 62
        assert {(r["topic"], r["partition"]) for r in rows} == {
            (topics.decisions, 0),
            (topics.decisions, 1),
            (topics.rewards, 1),
        }
        again = reader.latestOffset(end, ReadAllAvailable())
        assert again["partitions"] == end["partitions"] and again["clock_ms"] >= end["clock_ms"]
    finally:
        reader.stop()


@pytest.mark.parametrize("bad", ["", "x:1"])
def test_source_rejects_missing_options(bad):
    from stream.kafka_source import KafkaEventSource, KafkaSourceError

    with pytest.raises(KafkaSourceError, match="option"):
        KafkaEventSource({"bootstrap_servers": bad, "topics": ""}).streamReader(None)


def _kcat(bootstrap: str, topic: str, lines: list[str], libdir: Path) -> None:
    """Produce `key:value` lines with kcat, on the librdkafka confluent-kafka ships (Debian's 2.0.2
    cannot read Tansu's ApiVersions answer; see docs/operations.md)."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: `make install` installs it (apt-get install kcat)"
    wheel_lib = next(
        (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*")
    )
    (libdir / "librdkafka.so.1").unlink(missing_ok=True)
    (libdir / "librdkafka.so.1").symlink_to(wheel_lib)
    done = subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", ":"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        env={**os.environ, "LD_LIBRARY_PATH": str(libdir)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr


def test_kcat_confluent_kafka_and_kafka_python_events_all_become_rows(local_stack, topics, spark, tmp_path):
    """Apps log with whichever client they use: the same events through kcat (librdkafka's CLI),
    confluent-kafka (the EventLogger) and kafka-python become one timeline row each."""
    bootstrap = local_stack.bootstrap_servers
    by_client = {"kcat": [], "confluent": [], "python": []}
    for client in by_client:
        for m in range(5):
            for seq in range(2):
                by_client[client].append(_decision(f"{client}{m}", seq))
    libdir = tmp_path / "lib"
    libdir.mkdir()
    _kcat(
        bootstrap,
        topics.decisions,
        [f"{d.mdp_id}:{d.to_json_bytes().decode()}" for d in by_client["kcat"]],
        libdir,
    )
    rewards = [_reward(d.request_id, 0.1, 1.0) for d in by_client["kcat"]]
    _kcat(
        bootstrap, topics.rewards, [f"{r.request_id}:{r.to_json_bytes().decode()}" for r in rewards], libdir
    )
    with EventLogger(bootstrap, topics) as events:
        for d in by_client["confluent"]:
            events.log_decision(d)
            events.log_reward(_reward(d.request_id, 0.1, 2.0))
        events.flush(timeout_s=10)
    p = _Producer(bootstrap, topics)
    for d in by_client["python"]:
        p.decision(d, key=d.mdp_id)
        p.reward(_reward(d.request_id, 0.1, 3.0))
    p.flush()

    config = _config(tmp_path)
    query = start_timeline_query(spark, config, bootstrap, topics)
    try:
        frame = _wait_for_rows(config.output_dir, 30)
        time.sleep(1.0)
    finally:
        _stop(query)
    frame = load_timelines(config.output_dir)
    assert len(frame) == 30 and not frame.duplicated(["mdp_id", "sequence_number"]).any()
    for client, reward in (("kcat", 1.0), ("confluent", 2.0), ("python", 3.0)):
        rows = frame[frame["mdp_id"].str.startswith(client)]
        assert sorted(rows["request_id"]) == sorted(d.request_id for d in by_client[client]), client
        assert (rows["reward"] == reward).all(), client
    assert consume_all(bootstrap, topics.dead_letters) == []
