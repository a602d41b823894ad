"""The column-wise fast path agrees with pydantic on every record: accepted or not, same columns,
same dead-letter reason (`stream._fast_parse` only ever leaves records to pydantic)."""

from __future__ import annotations

import json
import random
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream._fast_parse import DECISIONS, REWARDS, fast_parse
from stream._parse import KIND_DEAD, make_batch_parser, parse_record

D, R = "decisions", "rewards"


def _decision(**changes) -> dict:
    base = {
        "schema_version": 2,
        "action_kind": "discrete",
        "request_id": "r-1",
        "entity_id": "u-1",
        "mdp_id": "m-1",
        "sequence_number": 3,
        "timestamp": "2026-11-23T10:00:00Z",
        "context_features": {"x": 1.5, "y": None, "z": 2},
        "possible_actions": ["a", "b", "c"],
        "action": "b",
        "action_probability": 0.25,
        "model_version": "v1",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


def _reward(**changes) -> dict:
    base = {"schema_version": 1, "request_id": "r-1", "timestamp": "2026-11-23T10:00:01Z", "reward": 1.0}
    base["metrics"] = {"click": 1.0, "buy": 0}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _raw(text: str) -> bytes:
    return text.encode()


def _decision_corpus() -> list[bytes]:
    rng = random.Random(3)
    good = [
        _decision(),
        _decision(schema_version=1, action_kind=_DROP),
        _decision(action_kind=_DROP),
        _decision(schema_version=_DROP),
        _decision(context_features={}),
        _decision(context_features={"a": None}),
        _decision(context_features={"y": 3.0, "x": -0.0}),  # keys in another order
        _decision(context_features={f"f{i}": rng.uniform(-1e6, 1e6) for i in range(8)}),
        _decision(context_features={"tiny": 1e-300, "huge": 1e300, "int": 12345678901234}),
        _decision(action_probability=1),
        _decision(action_probability=1.0),
        _decision(candidate_features=None, action_vector=None, action_log_density=None),
        _decision(timestamp="2026-11-23T10:00:00.5+01:00"),
        _decision(timestamp="2026-11-23T10:00:00.123456-03:30"),
        _decision(timestamp="2024-02-29T23:59:59+00:00"),
        _decision(request_id="é" * 512, mdp_id="m" * 512),
        _decision(possible_actions=["only"], action="only"),
        _decision(sequence_number=0),
    ]
    bad = [
        _decision(request_id=_DROP),
        _decision(mdp_id=None),
        _decision(entity_id=""),
        _decision(request_id="x" * 513),
        _decision(model_version=7),
        _decision(sequence_number=-1),
        _decision(sequence_number="5"),
        _decision(sequence_number=5.0),
        _decision(sequence_number=True),
        _decision(sequence_number=2**63),
        _decision(timestamp="2026-11-23T10:00:00"),
        _decision(timestamp="2026-11-23"),
        _decision(timestamp="2026-02-30T10:00:00Z"),
        _decision(timestamp="2026-11-23 10:00:00Z"),
        _decision(timestamp="2026-11-23t10:00:00z"),
        _decision(timestamp=1764000000),
        _decision(timestamp="2026-11-23T24:00:00Z"),
        _decision(timestamp="2026-11-23T10:00:00.1234567Z"),
        _decision(timestamp=None),
        _decision(action_probability=0),
        _decision(action_probability=1.5),
        _decision(action_probability=-0.1),
        _decision(action_probability="0.5"),
        _decision(action_probability=None),
        _decision(action_probability=True),
        _decision(action="d"),
        _decision(action=None),
        _decision(action=_DROP),
        _decision(possible_actions=[]),
        _decision(possible_actions=["a", "b", "a"], action="b"),
        _decision(possible_actions=["a", ""], action="a"),
        _decision(possible_actions=["a", 1], action="a"),
        _decision(possible_actions=["a", None], action="a"),
        _decision(possible_actions="a", action="a"),
        _decision(possible_actions=None),
        _decision(extra=1),
        _decision(extra=None),
        _decision(schema_version=None),
        _decision(schema_version=3),
        _decision(schema_version="2"),
        _decision(schema_version=1.0),
        _decision(action_kind=None),
        _decision(action_kind="bogus"),
        _decision(action_kind="continuous"),
        _decision(schema_version=1, action_kind="parametric"),
        _decision(candidate_features=[{"a": 1.0}, {"b": 1.0}, {"c": 1.0}]),
        _decision(action_vector=[0.1]),
        _decision(action_log_density=0.0),
        _decision(context_features=None),
        _decision(context_features=_DROP),
        _decision(context_features={"x": "1.5"}),
        _decision(context_features={"x": True}),
        _decision(context_features={"x": {"y": 1.0}}),
        _decision(context_features={"x": [1.0]}),
        _decision(context_features=[1.0]),
        _decision(context_features={"x": 1e400}),
        _decision(context_features={"x": 123456789012345678901234567890}),
    ]
    valid_parametric = _decision(
        action_kind="parametric",
        possible_actions=["c1", "c2"],
        action="c2",
        candidate_features=[{"p": 1.0}, {"p": 2.0, "q": None}],
    )
    valid_continuous = _decision(
        action_kind="continuous",
        possible_actions=["dx", "dy"],
        action=_DROP,
        action_probability=_DROP,
        action_vector=[0.5, -1.0],
        action_log_density=-1.2,
    )
    dump = [*good, *bad, valid_parametric, valid_continuous]
    payloads = [json.dumps(p, ensure_ascii=False).encode() for p in dump]
    text = json.dumps(_decision())
    payloads += [
        _raw(text.replace('"r-1"', '"r\\u002d1"')),  # an escape: same value
        _raw(text.replace('"u-1"', '"u\\n1"')),
        _raw(text.replace('"u-1"', '"u\t1"')),  # raw control character
        _raw(text.replace(", ", ",\n")),  # newlines between tokens: valid JSON
        _raw(" " + text),
        _raw(text + " "),
        _raw(text + text),
        _raw(text[:-1] + ', "mdp_id": "m-2"}'),  # duplicate key: the last one wins in pydantic
        _raw(text.replace('"x": 1.5', '"x": 1.5, "x": 2.5')),
        _raw(text.replace('"x": 1.5', '"x": NaN')),
        _raw(text.replace('"x": 1.5', '"x": Infinity')),
        _raw(text.replace('"x": 1.5', '"x": -Infinity')),
        _raw(text.replace('"action_probability": 0.25', '"action_probability": NaN')),
        _raw(text.replace('"x": 1.5', '"x": 1.50000000000000000001')),
        _raw(text.replace('"x": 1.5', '"x": 15e-1')),
        _raw(text.replace('"x": 1.5', '"x": 1.2345678901234567890123e-300')),
        _raw(text.replace('"x": 1.5', '"x": 123456789012345678901234567890.5')),
        _raw(text.replace('"x": 1.5', '"x": 4.9e-324')),
        _raw(text.replace('"z": 2', '"z": 9007199254740993')),
        *(
            _raw(text.replace('"x": 1.5', f'"x": {number}'))
            for number in ("01", "+1", ".5", "1.", "0x10", "1E5", "1e+5", "-0", "1.5e", "--1", "1_0")
        ),
        _raw(text.replace('"sequence_number": 3', '"sequence_number": 03')),
        _raw(text.replace('"sequence_number": 3', '"sequence_number": 3e0')),
        _raw(text.replace('"sequence_number": 3', '"sequence_number": -0')),
        _raw(text.replace('"action_probability": 0.25', '"action_probability": .25')),
        _raw(text.replace(": ", ":")),
        _raw(text.replace(": ", " :  ")),
        _raw(text.replace("true", "True")),
        _raw(text[:40]),
        _raw("[" + text + "]"),
        _raw("null"),
        _raw("{}"),
        _raw('{"request_id": "broken'),
        _raw("not json at all"),
        b"",
        text.encode().replace(b"u-1", b"u-\xff"),
        text.encode("utf-8").replace(b"u-1", "ü-1".encode()),
    ]
    payloads += [
        json.dumps(
            _decision(context_features={f"k{rng.randrange(30)}": rng.uniform(-10, 10) for _ in range(5)})
        )
        .replace("k", "k" if rng.random() < 0.9 else "k\\u0000")
        .encode()
        for _ in range(300)
    ]
    return payloads


def _reward_corpus() -> list[bytes]:
    good = [
        _reward(),
        _reward(metrics=_DROP),
        _reward(metrics={}),
        _reward(schema_version=_DROP),
        _reward(reward=_DROP, metrics={"click": 2}),
        _reward(reward=None, metrics={"click": 2.5}),
        _reward(reward=0),
        _reward(metrics={"buy": 1.0, "click": 0.0}),  # keys in another order
        _reward(metrics={"other": 3.0}),
        _reward(timestamp="2026-11-23T10:00:01.25+00:00"),
    ]
    bad = [
        _reward(reward=_DROP, metrics=_DROP),
        _reward(reward=None, metrics={}),
        _reward(metrics=None),
        _reward(metrics={"click": None}),
        _reward(metrics={"click": 1.0, "buy": None}),
        _reward(metrics={"null": 1.0, "buy": None}),
        _reward(metrics={"click": "1"}),
        _reward(metrics={"click": True}),
        _reward(metrics=[1.0]),
        _reward(reward="1.0"),
        _reward(reward=True),
        _reward(reward=1e400),
        _reward(schema_version=2),
        _reward(schema_version=None),
        _reward(request_id=""),
        _reward(request_id=None),
        _reward(timestamp=_DROP),
        _reward(timestamp="2026-11-23T10:00:01"),
        _reward(extra="x"),
    ]
    text = json.dumps(_reward())
    payloads = [json.dumps(p).encode() for p in [*good, *bad]]
    payloads += [
        _raw(text.replace('"reward": 1.0', '"reward": NaN')),
        _raw(text.replace('"click": 1.0', '"click": Infinity')),
        _raw(text[:-1] + ', "reward": 2.0}'),
        _raw("not json at all"),
        b"",
    ]
    payloads += [json.dumps(_reward(reward=float(i), request_id=f"r-{i}")).encode() for i in range(200)]
    return payloads


def _table(records: list[tuple[str, bytes]]) -> pa.Table:
    n = len(records)
    return pa.table(
        {
            "topic": [t for t, _ in records],
            "partition": pa.array([0] * n, pa.int32()),
            "offset": pa.array(range(n), pa.int64()),
            "key": pa.nulls(n, pa.string()),
            "value": pa.array([v for _, v in records], pa.binary()),
            "timestamp": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        }
    )


def _comparable(value):
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return dict(value)
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [_comparable(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@pytest.mark.parametrize("weights", [None, {"click": 2.0, "buy": 0.5, "absent": 3.0}])
def test_the_fast_path_agrees_with_pydantic_on_every_record(weights) -> None:
    records = [(D, p) for p in _decision_corpus()] + [(R, p) for p in _reward_corpus()]
    records += [("elsewhere", b"{}")]
    random.Random(5).shuffle(records)
    parsed = make_batch_parser(D, R, weights)(_table(records)).to_pylist()
    assert len(parsed) == len(records)
    for (topic, value), row in zip(records, parsed, strict=True):
        expected = parse_record(topic, value, D, R, weights)
        assert row["kind"] == expected["kind"], (value, expected.get("reason"))
        for name, want in expected.items():
            assert _comparable(row[name]) == _comparable(want), (name, value)
        if expected["kind"] != KIND_DEAD:
            assert row["reason"] is None


def test_the_fast_path_takes_the_usual_records_and_leaves_the_rest() -> None:
    decisions = _decision_corpus()
    _, accepted = fast_parse(pa.array([p.decode("utf-8", "replace") for p in decisions]), DECISIONS)
    assert accepted[:18].all()  # the good ones
    assert accepted.sum() > 250  # and the generated ones
    rewards = _reward_corpus()
    _, accepted = fast_parse(pa.array([p.decode() for p in rewards]), REWARDS, {"click": 1.0})
    assert accepted[:10].all() and accepted.sum() >= 210
    assert not accepted[10:29].any()  # the bad ones are pydantic's to name


# --- property-based: any batch of payloads, however broken ---------------------------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)
_DECISION_KEYS = [*_decision(), "extra"]
_REWARD_KEYS = [*_reward(), "extra"]


def _edited(base, keys: list[str]) -> st.SearchStrategy[bytes]:
    """A valid event with up to 3 keys replaced by any JSON value, dropped, or added, as JSON bytes."""
    edits = st.dictionaries(st.sampled_from(keys), _JSON | st.just(_DROP), max_size=3)
    return edits.map(lambda changes: json.dumps(base(**changes)).encode())


_RECORDS = st.lists(
    st.one_of(
        st.tuples(st.just(D), _edited(_decision, _DECISION_KEYS)),
        st.tuples(st.just(R), _edited(_reward, _REWARD_KEYS)),
        st.tuples(st.sampled_from([D, R, "elsewhere"]), st.binary(max_size=64)),
        st.tuples(st.sampled_from([D, R]), _JSON.map(lambda v: json.dumps(v).encode())),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_RECORDS)
def test_no_batch_of_payloads_crashes_the_parser_and_each_bad_one_is_a_dead_letter(records) -> None:
    parsed = make_batch_parser(D, R)(_table(records)).to_pylist()
    assert len(parsed) == len(records)
    for offset, ((topic, value), row) in enumerate(zip(records, parsed, strict=True)):
        expected = parse_record(topic, value, D, R)
        assert row["src_offset"] == offset and row["src_topic"] == topic
        assert row["kind"] == expected["kind"], (value, expected.get("reason"))
        if row["kind"] == KIND_DEAD:
            assert row["reason"], value  # a reason for every dead letter
            assert row["payload"] == value.decode("utf-8", errors="replace")  # and the payload as sent
        else:
            for name, want in expected.items():
                assert _comparable(row[name]) == _comparable(want), (name, value)
