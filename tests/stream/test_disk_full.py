"""The timeline job on a full disk: it fails loudly, loses nothing, and resumes once space is freed.

The output and the checkpoint share one small tmpfs, as they would share an operator's volume. The
disk is filled for real (a ballast file sized to what is free) from `on_batch`, right after the
batch that read a wave of events, so the next write on the volume fails with ENOSPC at a known
step: with 64 KiB left, Spark's small checkpoint files still fit and the job's own timeline write
fails; with nothing left, Spark's commit of that batch fails. Mounting needs root (CI runs as root).

Windows are short (attribution 0.1 s, idle 0.1 s, trigger 0.5 s): a wave read by batch N closes in
batch N+1.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.errors import StreamingQueryException

from contracts import DecisionEvent, RewardEvent, Topics
from infra.commands.stream import failure_cause
from stream import EventLogger, StreamConfig, load_timelines, start_timeline_query
from stream._layout import timelines_path
from stream.timelines import BatchStats
from tests.helpers import consume_all

pytestmark = pytest.mark.faults

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
VOLUME_SIZE = "16m"
FEATURES = 40  # per decision: a wave of 600 two-step MDPs writes ~0.5 MB of timeline parquet


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test, unmounted afterwards."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"mounting a {VOLUME_SIZE} tmpfs at {mount_point} failed ({mounted.stderr.strip()!r}, uid "
            f"{os.getuid()}): the disk-full tests fill a real volume and need root, as CI has; run them "
            "as root or deselect them with -m 'not faults'"
        )
    try:
        yield mount_point
    finally:
        # Spark's JVM (shared by the session) keeps the file its failed checkpoint write had open.
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def _config(volume: Path) -> StreamConfig:
    return StreamConfig(
        output_dir=volume / "out",
        checkpoint_dir=volume / "checkpoint",
        attribution_window_s=0.1,
        mdp_idle_timeout_s=0.1,
        trigger_interval_s=0.5,
    )


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _fill(volume: Path, leave_bytes: int) -> None:
    """Grow `volume/ballast` until `leave_bytes` are free on the volume."""
    with open(volume / "ballast", "ab") as file:
        os.posix_fallocate(file.fileno(), file.tell(), max(_free_bytes(volume) - leave_bytes, 0))
    assert _free_bytes(volume) <= leave_bytes


def _log_wave(bootstrap: str, topics: Topics, name: str, mdps: int) -> list[str]:
    """`mdps` two-step MDPs, each decision with a reward of 1.0; returns the request ids."""
    rng = random.Random(name)
    produced = []
    with EventLogger(bootstrap, topics) as events:
        for m in range(mdps):
            for seq in range(2):
                request_id = f"{name}{m}-{seq}"
                events.log_decision(
                    DecisionEvent(
                        request_id=request_id,
                        entity_id=f"user-{name}{m}",
                        mdp_id=f"{name}{m}",
                        sequence_number=seq,
                        timestamp=T0 + timedelta(seconds=seq),
                        context_features={f"f{i}": rng.random() for i in range(FEATURES)},
                        possible_actions=["a", "b"],
                        action="a",
                        action_probability=0.5,
                        model_version="v1",
                    )
                )
                events.log_reward(
                    RewardEvent(
                        request_id=request_id, timestamp=T0 + timedelta(seconds=seq + 0.01), reward=1.0
                    )
                )
                produced.append(request_id)
        events.flush(timeout_s=30)
    return produced


def _fill_after_wave(volume: Path, leave_bytes: int, wave_rows: int) -> Callable[[BatchStats], None]:
    """An `on_batch` that fills the volume right after the batch that read the wave's events."""

    def on_batch(stats: BatchStats) -> None:
        if stats.input_rows == wave_rows:
            _fill(volume, leave_bytes)

    return on_batch


def _wait_for_rows(query, config: StreamConfig, n_rows: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(load_timelines(config.output_dir)) < n_rows:
        assert query.isActive, f"the job failed: {query.exception()}"
        assert time.monotonic() < deadline, f"{n_rows} timeline rows not written within {timeout_s} s"
        time.sleep(0.3)


def _run_until_failed(spark, config: StreamConfig, bootstrap: str, topics: Topics, on_batch) -> str:
    """Start the job, wait until it stops, and return its failure as `streamrl stream` prints it."""
    query = start_timeline_query(spark, config, bootstrap, topics, on_batch=on_batch)
    try:
        with contextlib.suppress(StreamingQueryException):  # raised when the query failed
            assert query.awaitTermination(60), "the job kept running on a full disk for 60 s"
        assert query.exception() is not None, "the job stopped on a full disk without an error"
        return str(query.exception())
    finally:
        query.stop()


def _resume(spark, config: StreamConfig, bootstrap: str, topics: Topics, n_rows: int) -> None:
    """Restart from the same checkpoint until `n_rows` rows are committed, then run a few batches more."""
    query = start_timeline_query(spark, config, bootstrap, topics)
    try:
        _wait_for_rows(query, config, n_rows)
        time.sleep(1.5)  # a few more batches: nothing may be written twice
        assert query.isActive, f"the resumed job failed: {query.exception()}"
    finally:
        query.stop()


def _listing(root: Path) -> list[str]:
    """Every file and folder under `root` (dot-named staging folders included), relative to it."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _batch_ids(log_dir: Path) -> list[int]:
    return sorted(int(path.name) for path in log_dir.iterdir() if path.name.isdigit())


def _assert_failed_batch_not_committed(config: StreamConfig) -> None:
    """The batch that hit the full disk is planned (offset log) but not committed: a restart runs it again."""
    offsets = _batch_ids(config.checkpoint_dir / "offsets")
    commits = _batch_ids(config.checkpoint_dir / "commits")
    assert offsets[-1] == (commits[-1] + 1 if commits else 0), (offsets, commits)


def _assert_exactly_once(config: StreamConfig, bootstrap: str, topics: Topics, produced: list[str]) -> None:
    frame = load_timelines(config.output_dir)
    counts = frame["request_id"].value_counts()
    assert sorted(set(produced) - set(counts.index)) == [], "decisions lost"
    assert counts[counts > 1].to_dict() == {}, "decisions written twice"
    assert len(frame) == len(produced)
    assert frame["reward_observed"].all() and frame["reward"].sum() == len(produced)
    assert frame.groupby("mdp_id")["not_terminal"].sum().eq(1).all()  # both steps of each MDP linked
    assert consume_all(bootstrap, topics.dead_letters) == []


def test_timeline_write_on_a_full_disk_fails_loudly_and_resumes_when_freed(
    local_stack, topics, spark, volume
):
    """64 KiB left: the job's own parquet write fails. The error names the path and the cause, no
    partial file stays behind, committed rows stay readable, and the restart writes every row once."""
    bootstrap = local_stack.bootstrap_servers
    config = _config(volume)
    produced = _log_wave(bootstrap, topics, "a", 50)
    query = start_timeline_query(spark, config, bootstrap, topics)
    try:
        _wait_for_rows(query, config, len(produced))  # committed before the disk fills
    finally:
        query.stop()
    committed = _listing(timelines_path(config.output_dir))
    assert sum(name.endswith(".parquet") for name in committed) == 1, committed
    wave = _log_wave(bootstrap, topics, "b", 600)
    produced += wave

    failure = _run_until_failed(
        spark, config, bootstrap, topics, _fill_after_wave(volume, 64 * 1024, 2 * len(wave))
    )

    timelines = timelines_path(config.output_dir)
    assert "TimelineWriteError: timeline batch" in failure, failure
    assert f"writing its timeline rows under {timelines} failed: No space left on device" in failure, failure
    # `streamrl stream` leads its failure message with that line, ahead of Spark's report.
    cause = failure_cause(failure)
    assert cause.startswith("stream.timelines.TimelineWriteError: timeline batch "), cause
    assert f"rows under {timelines} failed: No space left on device" in cause, cause
    assert f"restart the job with the same checkpoint ({config.checkpoint_dir})" in failure, failure
    _assert_failed_batch_not_committed(config)
    # Only wave a's committed file is left (the failed write's staging folder is gone with its
    # partial file), and readers see wave a alone.
    assert _listing(timelines) == committed
    assert sorted(load_timelines(config.output_dir)["request_id"]) == sorted(produced[: -len(wave)])

    produced += _log_wave(bootstrap, topics, "c", 50)  # logged while the job is down
    (volume / "ballast").unlink()
    _resume(spark, config, bootstrap, topics, len(produced))
    _assert_exactly_once(config, bootstrap, topics, produced)


def test_checkpoint_write_on_a_full_disk_fails_loudly_and_resumes_when_freed(
    local_stack, topics, spark, volume
):
    """No byte left: Spark's commit of the batch fails after the job wrote its state. The restart
    runs that batch again and writes every row once."""
    bootstrap = local_stack.bootstrap_servers
    config = _config(volume)
    produced = _log_wave(bootstrap, topics, "a", 200)

    failure = _run_until_failed(
        spark, config, bootstrap, topics, _fill_after_wave(volume, 0, 2 * len(produced))
    )

    assert "java.io.IOException: No space left on device" in failure, failure
    assert "No space left on device" in failure_cause(failure), failure_cause(failure)
    assert f"checkpointLocation={config.checkpoint_dir}" in failure, failure
    _assert_failed_batch_not_committed(config)
    assert load_timelines(config.output_dir).empty

    (volume / "ballast").unlink()
    _resume(spark, config, bootstrap, topics, len(produced))
    _assert_exactly_once(config, bootstrap, topics, produced)
