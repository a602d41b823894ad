"""EventLogger against the real broker: exactly-once arrival, validation before sending, no silent drops."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from contracts import DecisionEvent, RewardEvent, Topics
from contracts.actions import ActionKind
from stream import EventLogError, EventLogger, InvalidEventError, ensure_topics
from stream.logger import EventKind
from tests.helpers import consume_all, free_port

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _decision(i: int) -> DecisionEvent:
    return DecisionEvent(
        request_id=f"req-{i}",
        entity_id=f"user-{i % 3}",
        mdp_id=f"mdp-{i % 3}",
        sequence_number=i,
        timestamp=T0 + timedelta(seconds=i),
        context_features={"age": float(i), "clicks": None},
        possible_actions=["email", "push", "none"],
        action="push",
        action_probability=0.5,
        model_version="v1",
    )


def _reward(i: int) -> RewardEvent:
    return RewardEvent(request_id=f"req-{i}", timestamp=T0 + timedelta(minutes=1, seconds=i), reward=float(i))


def test_logged_events_arrive_exactly_once_keyed_and_parse_back(local_stack, topics: Topics) -> None:
    decisions = [_decision(i) for i in range(30)]
    rewards = [_reward(i) for i in range(0, 30, 2)]
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        for event in decisions:
            logger.log_decision(event)
        for event in rewards:
            logger.log_reward(event)
        logger.flush(timeout_s=15)

    got_decisions = consume_all(local_stack.bootstrap_servers, topics.decisions)
    got_rewards = consume_all(local_stack.bootstrap_servers, topics.rewards)
    parsed = sorted(
        (DecisionEvent.model_validate_json(r.value) for r in got_decisions), key=lambda e: e.sequence_number
    )
    assert parsed == decisions  # each exactly once, nothing altered
    assert all(r.key.decode() == DecisionEvent.model_validate_json(r.value).mdp_id for r in got_decisions)
    # Keyed by mdp_id: one MDP's decisions share a partition, in logged order.
    by_mdp: dict[str, set[int]] = {}
    for r in got_decisions:
        by_mdp.setdefault(r.key.decode(), set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_mdp.values())
    assert (
        sorted((RewardEvent.model_validate_json(r.value) for r in got_rewards), key=lambda e: e.reward)
        == rewards
    )
    assert all(r.key.decode() == RewardEvent.model_validate_json(r.value).request_id for r in got_rewards)


def test_keys_land_on_the_partition_kafka_python_picks(local_stack, topics: Topics) -> None:
    """Apps log with kafka-python, serving with this logger: one mdp_id must map to one partition."""
    from kafka.partitioner.default import murmur2  # what kafka-python's DefaultPartitioner hashes with

    decisions = [_decision(i).model_copy(update={"mdp_id": f"mdp-{i}"}) for i in range(20)]
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        for event in decisions:
            logger.log_decision(event)
    got = {r.key: r.partition for r in consume_all(local_stack.bootstrap_servers, topics.decisions)}
    assert len(got) == 20 and len(set(got.values())) == 2
    assert got == {key: (murmur2(key) & 0x7FFFFFFF) % 2 for key in got}


def test_sync_logging_confirms_where_the_event_landed(local_stack, topics: Topics) -> None:
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        delivery = logger.log_decision_sync(_decision(7))
        reward_delivery = logger.log_reward_sync(_reward(7))
    assert delivery.topic == topics.decisions and reward_delivery.topic == topics.rewards
    records = consume_all(local_stack.bootstrap_servers, topics.decisions)
    assert [(r.partition, r.offset) for r in records] == [(delivery.partition, delivery.offset)]


def test_invalid_events_raise_before_anything_is_sent(local_stack, topics: Topics) -> None:
    bad_propensity = DecisionEvent.model_construct(**{**_decision(1).model_dump(), "action_probability": 1.5})
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        with pytest.raises(InvalidEventError, match="expects a DecisionEvent, got dict"):
            logger.log_decision(_decision(1).model_dump())  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError, match="expects a RewardEvent, got DecisionEvent"):
            logger.log_reward(_decision(1))  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError, match="action_probability"):
            logger.log_decision(bad_propensity)
        with pytest.raises(InvalidEventError, match="bytes"):
            logger.publish_raw(topics.decisions, "not bytes")  # type: ignore[arg-type]
        logger.flush(timeout_s=5)  # nothing pending, nothing failed
    assert consume_all(local_stack.bootstrap_servers, topics.decisions) == []
    assert consume_all(local_stack.bootstrap_servers, topics.rewards) == []


def test_every_action_kind_is_logged_and_checked_against_its_kind(local_stack, topics: Topics) -> None:
    common = ("request_id", "entity_id", "mdp_id", "sequence_number", "timestamp", "context_features")
    base = {**{name: getattr(_decision(1), name) for name in common}, "model_version": "v2"}
    parametric = DecisionEvent(
        **{**base, "possible_actions": ["i1", "i2"]},
        action_kind=ActionKind.PARAMETRIC,
        action="i1",
        action_probability=0.25,
        candidate_features=[{"price": 2.0}, {"price": 4.0, "size": None}],
    )
    continuous = DecisionEvent(
        **{**base, "request_id": "req-2", "possible_actions": ["steer"]},
        action_kind=ActionKind.CONTINUOUS,
        action_vector=[0.5],
        action_log_density=-0.3,
    )
    no_vector = DecisionEvent.model_construct(**{**continuous.model_dump(), "action_vector": None})
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        logger.log_decision(parametric)
        logger.log_decision_sync(continuous)
        with pytest.raises(InvalidEventError, match="continuous decisions need action_vector"):
            logger.log_decision(no_vector)
    got = [
        DecisionEvent.model_validate_json(r.value)
        for r in consume_all(local_stack.bootstrap_servers, topics.decisions)
    ]
    assert sorted(got, key=lambda e: e.request_id) == [parametric, continuous]


def test_publish_raw_sends_exact_bytes(local_stack, topics: Topics) -> None:
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        logger.publish_raw(topics.decisions, b"{not json", key="k1")
    [record] = consume_all(local_stack.bootstrap_servers, topics.decisions)
    assert (record.key, record.value) == (b"k1", b"{not json")


def test_flush_against_unreachable_broker_names_every_undelivered_event() -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens here: a real connection failure
    logger = EventLogger(closed, delivery_timeout_s=1.0, metadata_timeout_s=0.3)
    started = time.monotonic()
    logger.log_decision(_decision(1))
    logger.log_decision(_decision(2))
    logger.log_reward(_reward(1))
    with pytest.raises(EventLogError) as info:
        logger.flush(timeout_s=2)
    assert time.monotonic() - started < 10
    undelivered = info.value.undelivered
    assert sorted((u.kind, u.request_id) for u in undelivered) == [
        (EventKind.DECISION, "req-1"),
        (EventKind.DECISION, "req-2"),
        (EventKind.REWARD, "req-1"),
    ]
    assert all(u.event is not None and u.cause for u in undelivered)
    message = str(info.value)
    assert closed in message and "decision:req-1" in message and "decision:req-2" in message
    assert "reward:req-1" in message
    logger.flush(timeout_s=1)  # reported once: the failures were handed over in the exception
    with pytest.raises(EventLogError, match="req-3"):
        logger.log_decision_sync(_decision(3), timeout_s=1)
    logger.close(timeout_s=1)


def test_ensure_topics_is_idempotent(local_stack, topics: Topics) -> None:
    ensure_topics(local_stack.bootstrap_servers, topics, partitions=2)  # already created by the fixture
    ensure_topics(local_stack.bootstrap_servers, topics, partitions=2)
    with EventLogger(local_stack.bootstrap_servers, topics) as logger:
        logger.log_reward_sync(_reward(1))
    assert len(consume_all(local_stack.bootstrap_servers, topics.rewards)) == 1


def test_broker_stopping_mid_stream_reports_queued_events(tmp_path) -> None:
    """The broker dies after metadata is known: failures come back through delivery callbacks."""
    from infra.stack import LocalStack
    from tests.helpers import stack_config_on_free_ports

    stack = LocalStack(stack_config_on_free_ports(tmp_path / "stack"))
    topics = Topics(decisions="d", rewards="r", dead_letters="dl", metrics="m")
    try:
        stack.up()
        ensure_topics(stack.bootstrap_servers, topics)
        logger = EventLogger(stack.bootstrap_servers, topics, delivery_timeout_s=1.5, metadata_timeout_s=0.5)
        logger.log_decision_sync(_decision(1))
    finally:
        stack.down()
    logger.log_decision(_decision(2))
    logger.log_reward(_reward(2))
    with pytest.raises(EventLogError) as info:
        logger.flush(timeout_s=5)
    assert sorted((u.kind.value, u.request_id) for u in info.value.undelivered) == [
        ("decision", "req-2"),
        ("reward", "req-2"),
    ]
    assert all(u.cause.startswith("_MSG_TIMED_OUT") for u in info.value.undelivered), info.value
    logger.close(timeout_s=1)
