"""Reading timelines back: time filters work on the files Spark actually writes (INT96 timestamps)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream import load_timelines
from stream._layout import timelines_path
from stream.reader import TimelineReadError


def _write_with_spark(
    spark, output_dir, stamps: list[datetime], *, prefix: str = "m", added: dict[str, str] | None = None
) -> None:
    """Rows in the columns written before action kinds, plus `added` columns as Spark SQL expressions."""
    rows = [
        (
            f"{prefix}{i}",
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
    if added:
        from pyspark.sql import functions as F

        frame = frame.withColumns({name: F.expr(sql) for name, sql in added.items()})
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


def test_partitions_from_before_action_kinds_load_beside_newer_ones(spark, tmp_path) -> None:
    """Old partitions lack the action-kind columns: they read as discrete with those columns None,
    and newer partitions keep their values whether an old or a new file is listed first."""
    maps = "array<map<string,double>>"
    parametric = {
        "action_kind": "'parametric'",
        "action_features": "map('price', 2.0D)",
        "possible_action_features": "array(map('price', 2.0D), map('price', 3.5D, 'size', 1.0D))",
        "possible_next_action_features": f"cast(array() as {maps})",
        "action_vector": "cast(null as array<double>)",
        "action_log_density": "cast(null as double)",
    }
    continuous = {
        "action_kind": "'continuous'",
        "action_features": "cast(null as map<string,double>)",
        "possible_action_features": f"cast(null as {maps})",
        "possible_next_action_features": f"cast(null as {maps})",
        "action_vector": "array(0.5D, -1.0D)",
        "action_log_density": "-0.75D",
    }
    day = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    new_first, old_first = tmp_path / "new_first", tmp_path / "old_first"
    _write_with_spark(spark, new_first, [day - timedelta(days=1)], prefix="p", added=parametric)
    _write_with_spark(spark, old_first, [day + timedelta(days=1)], prefix="c", added=continuous)
    for output_dir in (new_first, old_first):
        _write_with_spark(spark, output_dir, [day], prefix="old")

    frame = load_timelines(new_first)
    assert list(frame["mdp_id"]) == ["old0", "p0"]
    assert list(frame["action_kind"]) == ["discrete", "parametric"]
    assert list(frame["action_features"]) == [None, {"price": 2.0}]
    assert list(frame["possible_action_features"]) == [None, [{"price": 2.0}, {"price": 3.5, "size": 1.0}]]
    assert list(frame["possible_next_action_features"]) == [None, []]
    assert frame["action_vector"].isna().all() and frame["action_log_density"].isna().all()

    frame = load_timelines(old_first)
    assert list(frame["mdp_id"]) == ["c0", "old0"]
    assert list(frame["action_kind"]) == ["continuous", "discrete"]
    assert list(frame["action_vector"]) == [[0.5, -1.0], None]
    assert frame["action_log_density"].iloc[0] == -0.75 and np.isnan(frame["action_log_density"].iloc[1])
    assert frame["action_features"].isna().all() and frame["possible_next_action_features"].isna().all()


def test_naive_bounds_are_refused(tmp_path) -> None:
    with pytest.raises(TimelineReadError, match="timezone-aware"):
        load_timelines(tmp_path, start=datetime(2026, 1, 1))


def test_nothing_written_yet_is_an_empty_frame(tmp_path) -> None:
    assert load_timelines(tmp_path).empty


def test_reads_while_a_replayed_batch_is_rewritten_in_place(spark, tmp_path) -> None:
    """A restarted stream job rewrites a replayed batch: Spark's dynamic partition overwrite deletes
    `batch_id=N/` and renames freshly named files in. A reader that listed the old files must not fail.

    The rewriting thread repeats that commit step on the filesystem (new file names, delete, rename)
    so the race happens often enough to be seen; the files it moves are the ones Spark wrote.
    """
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    _write_with_spark(spark, tmp_path, [base + timedelta(minutes=i) for i in range(6)])
    (batch,) = timelines_path(tmp_path).glob("ds=*/batch_id=0")
    template = tmp_path / "template"
    shutil.copytree(batch, template)
    stop = threading.Event()

    def replay_forever() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            staged = batch.parent / f".spark-staging-{n}"
            staged.mkdir()
            for f in template.glob("*.parquet"):
                shutil.copy(f, staged / f"part-{n:05d}-{f.name}")
            shutil.rmtree(batch)
            os.rename(staged, batch)
            stop.wait(0.05)  # far more often than real replays, so the race shows within seconds

    writer = threading.Thread(target=replay_forever, daemon=True)
    writer.start()
    counts = []
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            counts.append(len(load_timelines(tmp_path)))
    finally:
        stop.set()
        writer.join(timeout=5)
    # All or nothing of the batch (a read may fall between the delete and the rename), never an error.
    assert set(counts) <= {0, 6}
    assert counts.count(6) > len(counts) // 2
