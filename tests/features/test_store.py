"""Feast on real Redis + parquet: online push/read order, missing values, point-in-time join, errors, latency."""

from __future__ import annotations

import socket
import statistics
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from features import (
    FeatureStoreConfig,
    FeatureStoreError,
    OnlineFeatureReader,
    build_feature_store,
    get_training_features,
    push_context_features,
)

T0 = pd.Timestamp("2026-03-01T12:00:00Z")


def _ids(n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:6]
    return [f"{prefix}-{i}" for i in range(n)]


def test_online_read_preserves_request_order_and_missing_is_none(feast_store, feast_config) -> None:
    ids = _ids(30)
    rows = pd.DataFrame(
        {
            "entity_id": ids,
            "event_timestamp": [T0] * len(ids),
            "f_age": np.arange(len(ids), dtype=float),
            "f_clicks": [np.nan if i % 3 == 0 else float(i * 10) for i in range(len(ids))],
        }  # f_hour absent entirely → missing
    )
    assert push_context_features(feast_store, rows, offline=False) == len(ids)
    reader = OnlineFeatureReader(feast_store, feast_config)
    request = [ids[17], "never-seen", ids[3], ids[29], ids[0], ids[17]]
    got = reader.get(request)
    assert [r["f_age"] for r in got] == [17.0, None, 3.0, 29.0, 0.0, 17.0]
    assert [r["f_clicks"] for r in got] == [170.0, None, None, 290.0, None, 170.0]
    assert all(list(r) == ["f_age", "f_clicks", "f_hour"] and r["f_hour"] is None for r in got)
    assert reader.get([]) == []


def test_online_keeps_the_newest_event_per_entity(feast_store, feast_config) -> None:
    (entity,) = _ids(1)
    newer = pd.DataFrame(
        {"entity_id": [entity], "event_timestamp": [T0 + pd.Timedelta(minutes=5)], "f_age": [2.0]}
    )
    older = pd.DataFrame({"entity_id": [entity], "event_timestamp": [T0], "f_age": [1.0]})
    push_context_features(feast_store, newer, offline=False)
    push_context_features(feast_store, older, offline=False)  # arrives late: must not win
    reader = OnlineFeatureReader(feast_store, feast_config)
    assert reader.get([entity])[0]["f_age"] == 2.0
    newest = newer.assign(event_timestamp=T0 + pd.Timedelta(minutes=10), f_age=3.0)
    push_context_features(feast_store, newest, offline=False)
    assert reader.get([entity])[0]["f_age"] == 3.0  # reads are never served from a stale cache


def test_point_in_time_join_never_leaks_future_values(feast_store) -> None:
    a, b, c = _ids(3)
    history = pd.DataFrame(
        {
            "entity_id": [a, a, a, b],
            "event_timestamp": [T0, T0 + pd.Timedelta(minutes=10), T0 + pd.Timedelta(minutes=20), T0],
            "f_age": [1.0, 2.0, 3.0, 50.0],
            "f_clicks": [10.0, np.nan, 30.0, 5.0],
        }
    )
    push_context_features(feast_store, history, offline=True)
    query = pd.DataFrame(
        {
            "entity_id": [a, a, a, a, b, c, b],
            "event_timestamp": [
                T0 + pd.Timedelta(minutes=15),  # between 2nd and 3rd update → 2nd
                T0 - pd.Timedelta(minutes=1),  # before any value → missing (row kept)
                T0 + pd.Timedelta(minutes=20),  # exactly at the 3rd → 3rd
                T0 + pd.Timedelta(minutes=9, seconds=59),  # just before the 2nd → 1st
                T0 + pd.Timedelta(hours=2),  # beyond ttl (1 h) → missing
                T0,  # unknown entity → missing
                T0 + pd.Timedelta(minutes=30),
            ],
            "label": [0, 1, 2, 3, 4, 5, 6],
        }
    )
    joined = get_training_features(feast_store, query)
    assert joined["label"].tolist() == [0, 1, 2, 3, 4, 5, 6]  # caller's order and extra columns kept
    np.testing.assert_array_equal(joined["f_age"].to_numpy(), [2.0, np.nan, 3.0, 1.0, np.nan, np.nan, 50.0])
    np.testing.assert_array_equal(
        joined["f_clicks"].to_numpy(), [np.nan, np.nan, 30.0, 10.0, np.nan, np.nan, 5.0]
    )


def test_unreachable_redis_says_how_to_fix(tmp_path, feast_config: FeatureStoreConfig) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bad = feast_config.model_copy(update={"redis_connection": f"127.0.0.1:{port}", "repo_dir": tmp_path})
    with pytest.raises(FeatureStoreError, match=r"unreachable at 127\.0\.0\.1:\d+.*streamrl stack up"):
        build_feature_store(bad)


def test_config_accepts_redis_url_and_rejects_bad_names(tmp_path) -> None:
    config = FeatureStoreConfig(
        repo_dir=tmp_path,
        offline_dir=tmp_path,
        redis_connection="redis://127.0.0.1:6390/2",
        feature_names=["x"],
    )
    assert config.redis_connection == "127.0.0.1:6390,db=2" and config.redis_address == ("127.0.0.1", 6390, 2)
    with pytest.raises(ValueError, match="feature_names must be unique"):
        FeatureStoreConfig(repo_dir=tmp_path, offline_dir=tmp_path, feature_names=["x", "entity_id"])


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def test_online_read_latency(feast_store, feast_config, capsys) -> None:
    ids = _ids(100)
    rows = pd.DataFrame(
        {"entity_id": ids, "event_timestamp": [T0] * 100, "f_age": 1.0, "f_clicks": 2.0, "f_hour": 3.0}
    )
    push_context_features(feast_store, rows, offline=False)
    reader = OnlineFeatureReader(feast_store, feast_config)
    reader.get(ids)  # warm up
    results = {}
    for n, repeats in ((1, 200), (100, 50)):
        samples = []
        for i in range(repeats):
            request = [ids[i % 100]] if n == 1 else ids
            start = time.perf_counter()
            got = reader.get(request)
            samples.append(time.perf_counter() - start)
            assert got[0]["f_hour"] == 3.0
        results[n] = _percentiles(samples)
    with capsys.disabled():
        for n, (p50, p99) in results.items():
            print(
                f"\nOnlineFeatureReader.get {n:>3} entities, 3 features: p50 {p50:.2f} ms  p99 {p99:.2f} ms"
            )
    # Speed targets live in `python -m benchmarks features_bench`; this only prints the figures.
