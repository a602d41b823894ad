"""Known answers for the vectorized keyed passes (`stream._batch_passes`) and the batch parser,
without Spark or a broker: raw records in, timeline rows, dead letters and state out, compared with
values worked out by hand from the events below."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from contracts import DecisionEvent, RewardEvent
from contracts.actions import ActionKind
from stream._batch_passes import BatchRules, advance_timelines, empty_state
from stream._parse import make_batch_parser
from stream._rows import ARROW_ROW_SCHEMA
from stream.timelines import _widen

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
RULES = BatchRules(attribution_window_ms=1000, close_after_ms=2000, closed_retention_ms=60_000)


def _decision(mdp: str, seq: int, action: str = "a", **extra) -> bytes:
    fields = {
        "request_id": f"{mdp}-{seq}",
        "entity_id": "u",
        "mdp_id": mdp,
        "sequence_number": seq,
        "timestamp": T0 + timedelta(seconds=seq),
        "context_features": {"x": float(seq), "missing": None},
        "possible_actions": ["a", "b"],
        "action": action,
        "action_probability": 0.5,
        "model_version": "v1",
        **extra,
    }
    return DecisionEvent(**fields).to_json_bytes()


def _reward(request_id: str, after_s: float, reward: float, metrics: dict | None = None) -> bytes:
    seq = int(request_id.rsplit("-", 1)[1])
    stamp = T0 + timedelta(seconds=seq + after_s)
    return RewardEvent(
        request_id=request_id, timestamp=stamp, reward=reward, metrics=metrics or {}
    ).to_json_bytes()


def _parsed(records: list[tuple[str, bytes]], clock_ms: int, first_offset: int = 0) -> pa.Table:
    n = len(records)
    table = pa.table(
        {
            "topic": [topic for topic, _ in records],
            "partition": pa.array([0] * n, pa.int32()),
            "offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
            "key": ["k"] * n,
            "value": pa.array([value for _, value in records], pa.binary()),
            "timestamp": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        }
    )
    return _widen(make_batch_parser("d", "r")(table), clock_ms)


def test_rewards_are_attributed_and_mdps_closed_with_a_terminal_row() -> None:
    records = [
        ("r", _reward("m1-2", 0.5, 4.0)),  # before its decision, inside the window
        ("d", _decision("m1", 0)),
        ("d", _decision("m1", 1, "b")),
        ("d", _decision("m1", 2)),
        ("d", _decision("m1", 1, "b")),  # duplicate step: collapses to the first seen
        ("r", _reward("m1-0", 0.2, 1.0, {"click": 1.0})),
        ("r", _reward("m1-0", 0.9, 2.0, {"click": 1.0, "revenue": 0.5})),
        ("r", _reward("m1-1", 5.0, 100.0)),  # after the window: late
        ("d", _decision("m2", 5)),
        ("d", b"{not json"),
        ("r", _reward("zz-1", 0.0, 1.0)),  # its decision never comes
    ]
    first = advance_timelines(empty_state(), _parsed(records, 1000), 1000, RULES)
    assert first.timelines.num_rows == 0  # nothing idle long enough yet
    assert first.dead_letters.column("src_offset").to_pylist() == [9]
    assert first.dead_letters.column("reason").to_pylist()[0].startswith("invalid DecisionEvent")
    assert sorted(first.state.column("kind").to_pylist()) == ["decision"] * 4 + ["reward"] * 5

    second = advance_timelines(first.state, _parsed([], 3000), 3000, RULES)
    rows = sorted(second.timelines.to_pylist(), key=lambda r: (r["mdp_id"], r["sequence_number"]))
    m1 = [r for r in rows if r["mdp_id"] == "m1"]
    assert [r["sequence_number"] for r in m1] == [0, 1, 2]
    assert [r["sequence_number_ordinal"] for r in m1] == [1, 2, 3]
    assert [r["reward"] for r in m1] == [3.0, 0.0, 4.0]
    assert [r["reward_observed"] for r in m1] == [True, False, True]
    assert [dict(r["metrics"]) for r in m1] == [{"click": 2.0, "revenue": 0.5}, {}, {}]
    assert [dict(r["state_features"]) for r in m1] == [{"x": 0.0}, {"x": 1.0}, {"x": 2.0}]
    assert [dict(r["next_state_features"]) for r in m1] == [{"x": 1.0}, {"x": 2.0}, {}]
    assert [r["action"] for r in m1] == ["a", "b", "a"]
    assert [r["next_action"] for r in m1] == ["b", "a", None]
    assert [r["possible_next_actions"] for r in m1] == [["a", "b"], ["a", "b"], []]
    assert [r["time_diff"] for r in m1] == [1, 1, 0]
    assert [r["time_since_first"] for r in m1] == [0, 1, 2]
    assert [r["not_terminal"] for r in m1] == [True, True, False]
    assert {r["action_kind"] for r in rows} == {"discrete"}
    assert {r["ds"] for r in rows} == {"2026-11-23"}
    assert all(r["possible_next_action_features"] is None for r in rows)
    (m2,) = [r for r in rows if r["mdp_id"] == "m2"]
    assert (m2["not_terminal"], m2["time_diff"], m2["next_action"], m2["reward"]) == (False, 0, None, 0.0)

    letters = second.dead_letters.to_pylist()
    assert [(x["src_offset"], x["reason"]) for x in letters] == [
        (
            7,
            "late: reward at 2026-11-23T10:00:06+00:00 is after its decision's attribution window "
            "(1 s after 2026-11-23T10:00:01+00:00)",
        ),
        (10, "unattributed: no decision with request_id 'zz-1' arrived within 2 s of the reward"),
    ]
    assert json.loads(letters[0]["payload"])["reward"] == 100.0
    # Only the closed markers remain; a decision for a closed MDP is late.
    assert sorted(second.state.column("mdp_id").to_pylist()) == ["m1", "m2"]
    assert set(second.state.column("kind").to_pylist()) == {"closed"}
    third = advance_timelines(second.state, _parsed([("d", _decision("m2", 6))], 4000, 20), 4000, RULES)
    assert third.timelines.num_rows == 0
    assert third.dead_letters.to_pylist()[0]["reason"] == "late: mdp already closed"
    assert third.dead_letters.to_pylist()[0]["src_offset"] == 20


def test_an_open_mdp_keeps_its_steps_and_rewards_across_batches() -> None:
    """Steps arriving in different batches join one MDP; the idle clock restarts with each arrival."""
    first = advance_timelines(empty_state(), _parsed([("d", _decision("m", 0))], 1000), 1000, RULES)
    batch = [("d", _decision("m", 1)), ("r", _reward("m-0", 0.5, 2.0))]
    second = advance_timelines(first.state, _parsed(batch, 2500, 1), 2500, RULES)
    assert second.timelines.num_rows == 0  # step 1 arrived at 2500: open until 4500
    third = advance_timelines(second.state, _parsed([], 4500), 4500, RULES)
    rows = sorted(third.timelines.to_pylist(), key=lambda r: r["sequence_number"])
    assert [(r["sequence_number"], r["reward"], r["not_terminal"]) for r in rows] == [
        (0, 2.0, True),
        (1, 0.0, False),
    ]
    assert third.dead_letters.num_rows == 0


def test_mixed_kinds_are_dead_lettered_and_parametric_next_features_follow() -> None:
    continuous = {
        "action_kind": ActionKind.CONTINUOUS,
        "action": None,
        "action_probability": None,
        "action_vector": [0.0, 0.0],
        "action_log_density": -1.0,
    }
    parametric = {
        "action_kind": ActionKind.PARAMETRIC,
        "possible_actions": ["i1", "i2"],
        "candidate_features": [{"p": 1.0}, {"p": 2.0, "q": None}],
        "action": "i2",
    }
    records = [
        ("d", _decision("x", 0)),
        ("d", _decision("x", 1, **continuous)),
        ("d", _decision("p", 0, **parametric)),
        ("d", _decision("p", 1, **{**parametric, "candidate_features": [{"p": 3.0}, {"p": 4.0}]})),
    ]
    outcome = advance_timelines(empty_state(), _parsed(records, 0), 5000, RULES)
    letters = outcome.dead_letters.to_pylist()
    assert [x["src_offset"] for x in letters] == [0, 1]
    assert {x["reason"] for x in letters} == {
        "mixed action kinds: mdp 'x' has continuous and discrete decisions; "
        "log every decision of one MDP with the same action_kind"
    }
    rows = sorted(outcome.timelines.to_pylist(), key=lambda r: r["sequence_number"])
    assert [r["action_kind"] for r in rows] == ["parametric", "parametric"]
    assert [[dict(m) for m in r["possible_next_action_features"]] for r in rows] == [
        [{"p": 3.0}, {"p": 4.0}],
        [],
    ]
    assert dict(rows[0]["action_features"]) == {"p": 2.0}
    assert sorted(outcome.state.column("mdp_id").to_pylist()) == ["p", "x"]


def test_closed_ids_are_bounded_by_count_and_retention() -> None:
    rules = BatchRules(
        attribution_window_ms=1000, close_after_ms=2000, closed_retention_ms=10_000, max_closed_mdps=2
    )
    records = [("d", _decision(f"m{i}", 0)) for i in range(3)]
    state = advance_timelines(empty_state(), _parsed(records, 0), 5000, rules).state
    # Three MDPs closed at 5000; only the newest two ids are kept, and none after the retention.
    later = advance_timelines(state, _parsed([], 6000), 6000, rules).state
    assert later.num_rows == 2
    assert advance_timelines(later, _parsed([], 15_000), 15_000, rules).state.num_rows == 0
    assert later.schema == ARROW_ROW_SCHEMA
