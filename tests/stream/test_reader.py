"""Reading timelines back: time filters work on the files Spark actually writes (INT96 timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stream import load_timelines
from stream._layout import timelines_path
from stream.reader import TimelineReadError


def _write_with_spark(spark, output_dir, stamps: list[datetime]) -> None:
    rows = [
        (
            f"m{i}",
            f"r{i}",
            "e",
            0,
            1,
            ts,
            {"x": float(i)},
            "a",
            0.5,
            1.0,
            True,
            {},
            ["a"],
            {},
            None,
            [],
            0,
            0,
            False,
            "v1",
            ts.strftime("%Y-%m-%d"),
            0,
        )
        for i, ts in enumerate(stamps)
    ]
    schema = (
        "mdp_id string, request_id string, entity_id string, sequence_number long, "
        "sequence_number_ordinal long, timestamp timestamp, state_features map<string,double>, action string, "
        "action_probability double, reward double, reward_observed boolean, metrics map<string,double>, "
        "possible_actions array<string>, next_state_features map<string,double>, next_action string, "
        "possible_next_actions array<string>, time_diff long, time_since_first long, not_terminal boolean, "
        "model_version string, ds string, batch_id long"
    )
    frame = spark.createDataFrame(rows, schema)
    frame.write.partitionBy("ds", "batch_id").mode("append").parquet(str(timelines_path(output_dir)))


def test_start_and_end_filter_spark_written_files(spark, tmp_path) -> None:
    base = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    stamps = [base + timedelta(minutes=30 * i) for i in range(6)]  # crosses midnight: two ds partitions
    _write_with_spark(spark, tmp_path, stamps)
    everything = load_timelines(tmp_path)
    assert len(everything) == 6
    assert everything["timestamp"].dt.tz is not None
    cut = stamps[3]
    after = load_timelines(tmp_path, start=cut)
    before = load_timelines(tmp_path, end=cut)
    assert sorted(after["request_id"]) == ["r3", "r4", "r5"]
    assert sorted(before["request_id"]) == ["r0", "r1", "r2"]
    assert after["state_features"].iloc[0] == {"x": 3.0}
    assert before["next_action"].isna().all()


def test_naive_bounds_are_refused(tmp_path) -> None:
    with pytest.raises(TimelineReadError, match="timezone-aware"):
        load_timelines(tmp_path, start=datetime(2026, 1, 1))


def test_nothing_written_yet_is_an_empty_frame(tmp_path) -> None:
    assert load_timelines(tmp_path).empty
