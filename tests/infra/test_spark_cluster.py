"""The timeline job on a real Spark standalone cluster: a master and two workers, each its own JVM
started with the scripts shipped inside pyspark, and `streamrl stream --master spark://…` against
the session's broker. The same events through `--master local[2]` must give the same timelines
and the same dead letters (docs/cluster.md quotes these command lines).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from contracts import DecisionEvent, RewardEvent, Topics
from infra.config import load_config
from stream import EventLogger, load_timelines
from stream.topics import ensure_topics
from tests.helpers import consume_all, free_port

SPARK_HOME = Path(__import__("pyspark").__file__).parent
MDPS = 40  # three steps each: 120 timeline rows
COMPARED = ["mdp_id", "sequence_number", "request_id", "action", "reward", "not_terminal", "state_features"]


@contextmanager
def _jvm(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """One `spark-class` JVM in its own process group, killed with the group when the block ends."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture
def spark_cluster(tmp_path: Path) -> Iterator[str]:
    """`spark://127.0.0.1:<port>` with two ALIVE workers of one core and 1 GiB each."""
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master_args = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
    master_args += ["--port", str(port), "--webui-port", str(ui)]
    with _jvm(tmp_path / "master.log", *master_args) as master:

        def worker(n: int):
            work_dir = tmp_path / f"worker{n}"
            work_dir.mkdir()
            return _jvm(
                tmp_path / f"worker{n}.log",
                "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(work_dir),
            )  # fmt: skip

        with worker(1), worker(2):
            deadline = time.monotonic() + 90
            while _alive_workers(ui) < 2:
                assert master.poll() is None, (tmp_path / "master.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "two workers did not register with the master in 90 s"
                time.sleep(1)
            yield master_url


def _alive_workers(ui_port: int) -> int:
    """ALIVE workers as the master's own status page reports them (`/json`)."""
    try:
        status = httpx.get(f"http://127.0.0.1:{ui_port}/json/", timeout=2, follow_redirects=True).json()
    except (httpx.HTTPError, json.JSONDecodeError):
        return 0
    return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")


def _environment(tmp_path: Path, name: str, stack, topics: Topics) -> Path:
    config = load_config(
        overrides={
            "run_dir": str(tmp_path / name),
            "topics": topics.model_dump(),
            "stream": {"attribution_window_s": 3, "mdp_idle_timeout_s": 1, "trigger_interval_s": 1},
        }
    ).model_copy(update={"stack": stack.config})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def _log_events(bootstrap: str, topics: Topics) -> None:
    """MDPS three-step MDPs, a reward for every second decision, and one malformed decision."""
    now = datetime.now(UTC)
    with EventLogger(bootstrap, topics) as events:
        for m in range(MDPS):
            for seq in range(3):
                decision = DecisionEvent(
                    request_id=f"m{m}-{seq}",
                    entity_id=f"user-{m}",
                    mdp_id=f"m{m}",
                    sequence_number=seq,
                    timestamp=now + timedelta(milliseconds=10 * seq),
                    context_features={"x": float(m), "step": float(seq)},
                    possible_actions=["a", "b"],
                    action="ab"[(m + seq) % 2],
                    action_probability=0.5,
                    model_version="v1",
                )
                events.log_decision(decision)
                if (m + seq) % 2 == 0:
                    reward = RewardEvent(
                        request_id=decision.request_id,
                        timestamp=now + timedelta(milliseconds=500),
                        reward=m + seq,
                    )
                    events.log_reward(reward)
        events.publish_raw(topics.decisions, b'{"request_id": "bad-1", "not": "a decision"}', key=b"bad")
        events.flush(timeout_s=10)


def _timelines_of(config: Path, tmp_path: Path, name: str, *master: str) -> pd.DataFrame:
    """Run `streamrl stream` until all MDPs are rows, SIGTERM it, and read its timelines."""
    output = yaml.safe_load(config.read_text())["run_dir"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRL_")}
    with open(tmp_path / f"{name}.log", "w", encoding="utf-8") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "stream", "--config", str(config), *master],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while len(frame := load_timelines(Path(output) / "timelines")) < 3 * MDPS:
            assert job.poll() is None, (tmp_path / f"{name}.log").read_text()[-4000:]
            assert time.monotonic() < deadline, f"{name}: {len(frame)} of {3 * MDPS} rows in 240 s"
            time.sleep(1)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=90) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
    finally:
        with suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    return frame


@pytest.mark.e2e
def test_cluster_mode_timelines_equal_local_mode(
    local_stack, topics: Topics, spark_cluster: str, tmp_path: Path
):
    # Both jobs read the same event topics; each writes its own dead-letter topic.
    cluster_topics = topics.model_copy(update={"dead_letters": f"{topics.dead_letters}-cluster"})
    ensure_topics(local_stack.bootstrap_servers, cluster_topics, partitions=2)
    _log_events(local_stack.bootstrap_servers, topics)

    on_cluster = _timelines_of(
        _environment(tmp_path, "cluster", local_stack, cluster_topics),
        tmp_path,
        "cluster",
        "--master",
        spark_cluster,
    )
    executors = {n: sorted(p.name for p in (tmp_path / f"worker{n}").glob("app-*")) for n in (1, 2)}
    assert all(executors.values()), f"each worker ran an executor of the job: {executors}"
    local = _timelines_of(_environment(tmp_path, "local", local_stack, topics), tmp_path, "local")

    def rows(frame: pd.DataFrame) -> list[tuple]:
        return sorted(
            tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in row)
            for row in frame[COMPARED].itertuples(index=False)
        )

    assert len(on_cluster) == len(local) == 3 * MDPS
    assert rows(on_cluster) == rows(local)
    # Hand-computed: reward m + seq where (m + seq) is even, else 0; the last step is terminal.
    expected = {
        (f"m{m}", seq): float(m + seq) if (m + seq) % 2 == 0 else 0.0 for m in range(MDPS) for seq in range(3)
    }
    got = {(r.mdp_id, r.sequence_number): r.reward for r in on_cluster.itertuples()}
    assert got == expected
    assert on_cluster.groupby("mdp_id")["not_terminal"].sum().eq(2).all()

    dead = [consume_all(local_stack.bootstrap_servers, t.dead_letters) for t in (cluster_topics, topics)]
    assert [len(d) for d in dead] == [1, 1]
    assert json.loads(dead[0][0].value)["reason"] == json.loads(dead[1][0].value)["reason"]
