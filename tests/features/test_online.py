"""The raw Redis reader answers exactly like the Feast reader; config picks one; view freshness."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from features import (
    OnlineFeatureReader,
    RedisOnlineFeatureReader,
    RedisReaderConfig,
    feature_view_status,
    open_online_reader,
    push_context_features,
)

T0 = pd.Timestamp("2026-03-01T12:00:00Z")


def test_raw_redis_reader_matches_feast_reader(feast_store, feast_config) -> None:
    prefix = uuid.uuid4().hex[:6]
    ids = [f"{prefix}-{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "entity_id": ids,
            "event_timestamp": [T0] * len(ids),
            "f_age": rng.normal(0, 1e6, len(ids)),
            "f_clicks": [np.nan if i % 4 == 0 else float(i) for i in range(len(ids))],
        }  # f_hour never pushed
    )
    push_context_features(feast_store, rows, offline=False)
    request = [ids[5], "never-seen", *ids, ids[0]]
    expected = OnlineFeatureReader(feast_store, feast_config).get(request)
    reader = open_online_reader(feast_config.model_copy(update={"online_reader": RedisReaderConfig()}))
    assert isinstance(reader, RedisOnlineFeatureReader)
    assert reader.get(request) == expected
    # one entity goes without a pipeline (serving's path): the same answers, one at a time
    assert [reader.get([entity])[0] for entity in request] == expected
    assert reader.get([]) == []
    assert expected[1] == {"f_age": None, "f_clicks": None, "f_hour": None}


def test_status_reports_offline_and_online_freshness(feast_store, feast_config) -> None:
    entities = [f"{uuid.uuid4().hex[:6]}-status-{i}" for i in range(3)]
    now = pd.Timestamp.now(tz="UTC").floor("s")
    before = feature_view_status(feast_config)  # the store is shared with the other tests of the session
    push_context_features(
        feast_store,
        pd.DataFrame({"entity_id": entities, "event_timestamp": [now] * 3, "f_age": [1.0, 2.0, 3.0]}),
        offline=True,
    )
    status = feature_view_status(feast_config)
    assert status.feature_view == "context" and status.ttl_s == 3600
    assert status.offline_rows == before.offline_rows + 3
    assert status.online_entities == before.online_entities + 3  # three new entities, one hash each
    assert status.online_newest >= now.to_pydatetime() and status.offline_newest >= now.to_pydatetime()
    assert not status.stale and status.age_s < 600
