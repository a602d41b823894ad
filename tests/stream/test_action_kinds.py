"""Decisions of every action kind through the real broker and timeline job, read back as pandas.

One stream run: a two-step parametric MDP, a two-step continuous MDP, a version 1 (discrete)
decision as apps sent them before action kinds, an MDP mixing kinds, and events that break
their kind's rules. Expected values are written out by hand from the events below.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer

from contracts import DecisionEvent, RewardEvent
from contracts.actions import ActionKind
from stream import StreamConfig, load_timelines, start_timeline_query
from tests.helpers import consume_all

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
N_TIMELINE_ROWS = 5  # parametric 2 + continuous 2 + version 1 discrete 1
N_DEAD_LETTERS = 5  # 3 invalid events + both decisions of the mixed MDP


def _common(mdp: str, seq: int) -> dict:
    return {
        "request_id": f"{mdp}-{seq}",
        "entity_id": f"user-{mdp}",
        "mdp_id": mdp,
        "sequence_number": seq,
        "timestamp": T0 + timedelta(seconds=seq),
        "context_features": {"x": float(seq), "missing": None},
        "model_version": "v7",
    }


def _parametric(mdp: str, seq: int, ids: list[str], candidates: list[dict], action: str, p: float):
    return DecisionEvent(
        **_common(mdp, seq),
        action_kind=ActionKind.PARAMETRIC,
        possible_actions=ids,
        candidate_features=candidates,
        action=action,
        action_probability=p,
    )


def _continuous(mdp: str, seq: int, vector: list[float], log_density: float) -> DecisionEvent:
    return DecisionEvent(
        **_common(mdp, seq),
        action_kind=ActionKind.CONTINUOUS,
        possible_actions=["steer", "throttle"],
        action_vector=vector,
        action_log_density=log_density,
    )


def _discrete(mdp: str, seq: int) -> DecisionEvent:
    return DecisionEvent(**_common(mdp, seq), possible_actions=["a", "b"], action="b", action_probability=0.5)


def _json(event: DecisionEvent, **changes) -> bytes:
    document = {**json.loads(event.to_json_bytes()), **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def _wait(output_dir: Path, bootstrap: str, dead_letters_topic: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = load_timelines(output_dir)
        letters = consume_all(bootstrap, dead_letters_topic)
        if len(frame) >= N_TIMELINE_ROWS and len(letters) >= N_DEAD_LETTERS:
            return frame, [json.loads(r.value) for r in letters]
        time.sleep(0.5)
    raise AssertionError(
        f"expected {N_TIMELINE_ROWS} timeline rows and {N_DEAD_LETTERS} dead letters within "
        f"{timeout_s} s, got {len(load_timelines(output_dir))} and "
        f"{len(consume_all(bootstrap, dead_letters_topic))}"
    )


def test_every_action_kind_reaches_the_timelines(local_stack, topics, spark, tmp_path):
    bootstrap = local_stack.bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def send(mdp: str, value: bytes) -> None:
        producer.send(topics.decisions, key=mdp.encode(), value=value)

    step0 = _parametric(
        "p",
        0,
        ["i1", "i2"],
        [{"price": 3.0, "score": None}, {"price": 5.0, "score": 0.25}],
        action="i2",
        p=0.4,
    )
    step1 = _parametric(
        "p",
        1,
        ["i3", "i4", "i5"],
        [{"price": 1.0}, {"price": 2.0, "score": 1.0}, {"price": 4.0}],
        action="i3",
        p=0.2,
    )
    send("p", step1.to_json_bytes())  # out of order: the job sorts by sequence number
    send("p", step0.to_json_bytes())
    send("c", _continuous("c", 0, [0.25, -1.5], -1.25).to_json_bytes())
    send("c", _continuous("c", 1, [0.5, 0.75], -2.0).to_json_bytes())
    # Version 1, as apps logged before action kinds: no action_kind nor kind fields at all.
    v1 = json.loads(_discrete("d", 4).to_json_bytes())
    for name in ("action_kind", "candidate_features", "action_vector", "action_log_density"):
        del v1[name]
    send("d", json.dumps({**v1, "schema_version": 1}).encode())
    # One MDP, two kinds: every decision of it is dead-lettered.
    send("x", _discrete("x", 0).to_json_bytes())
    send("x", _continuous("x", 1, [0.0, 0.0], -1.0).to_json_bytes())
    # Events breaking their kind's rules.
    send("bad", _json(_continuous("bad", 0, [1.0, 1.0], -1.0), action_vector=...))
    send("bad", _json(step0, mdp_id="bad", candidate_features=[{"price": 3.0}, {}]))
    send("bad", _json(_continuous("bad", 2, [1.0, 1.0], -1.0), schema_version=1))
    producer.send(
        topics.rewards,
        key=b"p-0",
        value=RewardEvent(
            request_id="p-0", timestamp=T0 + timedelta(seconds=0.5), reward=1.5
        ).to_json_bytes(),
    )
    producer.flush()
    producer.close()

    config = StreamConfig(
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "checkpoint",
        attribution_window_s=1.0,
        mdp_idle_timeout_s=1.0,
        trigger_interval_s=0.5,
    )
    query = start_timeline_query(spark, config, bootstrap, topics)
    try:
        frame, letters = _wait(config.output_dir, bootstrap, topics.dead_letters)
    finally:
        query.stop()
        query.awaitTermination(30)

    assert list(frame["mdp_id"]) == ["c", "c", "d", "p", "p"]
    assert list(frame["action_kind"]) == ["continuous", "continuous", "discrete", "parametric", "parametric"]
    p = frame[frame["mdp_id"] == "p"].reset_index(drop=True)
    assert list(p["action"]) == ["i2", "i3"]
    assert list(p["action_probability"]) == [0.4, 0.2]
    assert list(p["reward"]) == [1.5, 0.0]
    assert list(p["action_features"]) == [{"price": 5.0, "score": 0.25}, {"price": 1.0}]
    assert list(p["possible_action_features"]) == [
        [{"price": 3.0}, {"price": 5.0, "score": 0.25}],  # the None score is an absent key
        [{"price": 1.0}, {"price": 2.0, "score": 1.0}, {"price": 4.0}],
    ]
    assert p["possible_next_action_features"][0] == p["possible_action_features"][1]
    assert p["possible_next_action_features"][1] == []
    assert list(p["possible_next_actions"]) == [["i3", "i4", "i5"], []]
    assert list(p["next_action"]) == ["i3", None]
    assert p["action_vector"].isna().all() and p["action_log_density"].isna().all()

    c = frame[frame["mdp_id"] == "c"].reset_index(drop=True)
    assert list(c["action_vector"]) == [[0.25, -1.5], [0.5, 0.75]]
    assert all(type(x) is float for v in c["action_vector"] for x in v)
    assert c["action_log_density"].dtype == "float64"
    assert list(c["action_log_density"]) == [-1.25, -2.0]
    assert list(c["action"]) == [None, None] and c["action_probability"].isna().all()
    assert list(c["possible_actions"]) == [["steer", "throttle"], ["steer", "throttle"]]
    assert list(c["not_terminal"]) == [True, False]
    for name in ("action_features", "possible_action_features", "possible_next_action_features"):
        assert c[name].isna().all(), name

    d = frame[frame["mdp_id"] == "d"].iloc[0]
    assert (d["action"], d["action_probability"], d["state_features"]) == ("b", 0.5, {"x": 4.0})
    assert d["action_features"] is None and d["possible_next_action_features"] is None
    assert d["action_vector"] is None and math.isnan(d["action_log_density"])

    assert len(letters) == N_DEAD_LETTERS
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons[:2] == [
        "invalid DecisionEvent: <record>: Value error, candidate_features[1] ('i2') has no features",
        "invalid DecisionEvent: <record>: Value error, continuous decisions need action_vector and "
        "action_log_density",
    ]
    assert reasons[2].startswith("invalid DecisionEvent: <record>: Value error, schema_version 1 decisions")
    mixed = "mixed action kinds: mdp 'x' has continuous and discrete decisions"
    assert [r[: len(mixed)] for r in reasons[3:]] == [mixed, mixed]
    mixed_payloads = sorted(
        json.loads(x["payload"])["sequence_number"] for x in letters if "mixed" in x["reason"]
    )
    assert mixed_payloads == [0, 1]
