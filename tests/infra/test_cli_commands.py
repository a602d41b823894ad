"""`streamrl` deploy, rollback, serve, stream, refresh and monitor, run as a user would:
`python -m infra.cli …` in a subprocess (`stack`, `features` and `train` have their own tests).

The environment YAML each test writes points at the session's real stack (Tansu, Redis) with
fresh topics; the stream job starts its own Spark. Effects are checked independently of the
CLI: the registry's `deployed.json` read as JSON, timelines read from parquet, HTTP answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from apps.notifications import ACTIONS, FEATURE_NAMES, SEND, NotificationSimConfig
from contracts import DecisionEvent, RewardEvent, Topics
from infra.cli import COMMANDS, main
from infra.config import load_config
from infra.environment import Environment
from monitoring import MetricsWindow
from stream import EventLogger, load_timelines
from tests.helpers import free_port
from tests.infra.onnx_rule import register_rule_policy
from trainer import ModelRegistry

STREAMRL = [sys.executable, "-m", "infra.cli"]
USERS = 100  # two decisions each: 200 timeline rows


@pytest.fixture
def environment(local_stack, topics: Topics, tmp_path: Path) -> tuple[Path, Environment]:
    """An environment file on the session stack: fresh topics, free ports, short windows, small models."""
    config = load_config(
        overrides={
            "run_dir": str(tmp_path / "run"),
            "topics": topics.model_dump(),
            # A reward counts within 3 s of its decision; an MDP closes 1 s after that.
            "stream": {"attribution_window_s": 3, "mdp_idle_timeout_s": 1, "trigger_interval_s": 1},
            "feature_store": {
                "project": f"cli_{uuid.uuid4().hex[:8]}",
                "online_reader": {"type": "redis"},
                "feature_names": list(FEATURE_NAMES),
            },
            "serving": {"port": free_port(), "poll_interval_s": 0.2},
            "monitoring": {"web_port": free_port()},
            "trainer": {"num_epochs": 3, "batch_size": 64, "hidden_sizes": [16, 16]},
            "evaluation": {
                "bootstrap_samples": 20,
                "min_rows": 50,
                "gate": {"min_effective_sample_size": 10},
            },
        }
    )
    config = config.model_copy(update={"stack": local_stack.config})
    path = tmp_path / "environment.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path, Environment.from_config(config)


def _child_env() -> dict[str, str]:
    """This process's environment without STREAMRL_* overrides: the YAML alone says where things are."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def streamrl(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one `streamrl` command to completion."""
    return subprocess.run(
        [*STREAMRL, *args], cwd=cwd, env=_child_env(), capture_output=True, text=True, timeout=timeout_s
    )


@contextmanager
def running(name: str, *args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """A long-running `streamrl` command with its output in `cwd/<name>.log`. When the block ends,
    whatever is left of its process group (a hung command, Spark's JVM) is killed."""
    with open(cwd / f"{name}.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [*STREAMRL, *args],
            cwd=cwd,
            env=_child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):  # the group is gone once everything in it has exited
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def log_tail(name: str, cwd: Path) -> str:
    """The end of what `running(name, …)` printed, for failure messages."""
    return (cwd / f"{name}.log").read_text(encoding="utf-8")[-4000:]


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, *processes: subprocess.Popen[str]
) -> None:
    """Poll `check` until it is true; fail early, with the command's exit code, if one of `processes` died."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for process in processes:
            assert process.poll() is None, (
                f"{process.args[3:5]} exited with {process.returncode} while waiting for {what} (see its log)"
            )
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.5)


def stop(process: subprocess.Popen[str], timeout_s: float = 60) -> int:
    """SIGTERM, as a scheduler or `kill` would send, and the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def pointer(env: Environment) -> dict:
    """The registry's deploy pointer, read as plain JSON (not through ModelRegistry)."""
    return json.loads((env.registry_dir / "deployed.json").read_text(encoding="utf-8"))


def test_help_lists_every_command_and_imports_nothing_heavy(tmp_path: Path) -> None:
    top = streamrl("--help", cwd=tmp_path, timeout_s=30)
    assert top.returncode == 0, top.stderr
    listed = " ".join(top.stdout.split())  # argparse wraps long help lines
    for name, command in COMMANDS.items():
        assert f"{name} {command.HELP}" in listed
    deploy = streamrl("deploy", "--help", cwd=tmp_path, timeout_s=30)
    assert deploy.returncode == 0 and deploy.stdout.startswith("usage: streamrl deploy "), deploy.stderr
    assert all(option in deploy.stdout for option in ("--list", "--reason", "--config FILE", "--run-dir DIR"))
    ack = streamrl("features", "ack", "--help", cwd=tmp_path, timeout_s=30)  # nested subcommands
    assert ack.returncode == 0 and ack.stdout.startswith("usage: streamrl features ack "), ack.stderr
    # Building the parser imports every command module; none may pull in torch, Spark or Feast.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, infra.cli; infra.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pyspark', 'feast', 'pandas'}))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    usage = streamrl("deploy", cwd=tmp_path, timeout_s=30)
    assert usage.returncode == 2 and "streamrl deploy: error: one of the arguments" in usage.stderr


def two_rules(env: Environment) -> tuple[ModelRegistry, str, str]:
    """The environment's registry with two hand-written rules registered (nothing deployed)."""
    registry = ModelRegistry(env.registry_dir)
    first = register_rule_policy(registry, NotificationSimConfig(rule_max_active_days=2)).version
    second = register_rule_policy(registry, NotificationSimConfig(rule_max_active_days=4)).version
    return registry, first, second


def test_deploy_and_rollback_move_the_pointer(environment, tmp_path: Path, capsys) -> None:
    path, env = environment
    registry, first, second = two_rules(env)
    args = ["--config", str(path)]

    done = streamrl("deploy", first, *args, "--reason", "day-0 rule", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"None -> {first}" in done.stdout
    assert pointer(env)["current"] == first
    assert pointer(env)["history"][-1]["reason"] == "day-0 rule"

    # The same command in-process (cheaper) for the other paths.
    assert main(["deploy", second, *args]) == 0
    assert pointer(env)["current"] == second
    assert main(["deploy", "m9999-deadbeef", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("streamrl deploy: error: model version 'm9999-deadbeef' is not registered")
    assert first in err and second in err
    assert pointer(env)["current"] == second  # unchanged
    assert main(["deploy", "--list", *args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["VERSION", "STATE"]
    created = registry.metadata(first).created_at.strftime("%Y-%m-%d")
    assert table[1].split()[:4] == [first, "rollback", "target", created]
    assert table[2].split()[:2] == [second, "deployed"]
    assert "hand_written_rule" in table[2] and "dont_send,send" in table[2]

    back = streamrl("rollback", *args, "--reason", "second one misbehaves", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert f"{second} -> {first}" in back.stdout
    state = pointer(env)
    assert state["current"] == first
    assert state["history"][-1] == {
        "kind": "rollback",
        "version": first,
        "previous": second,
        "at": state["history"][-1]["at"],
        "reason": "second one misbehaves",
    }

    # A model file changed after registration is refused by its hash; the pointer stays.
    onnx_path = env.registry_dir / "models" / second / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    assert main(["deploy", second, *args]) == 1
    assert "sha256" in capsys.readouterr().err
    assert pointer(env)["current"] == first


def test_deploy_canary_starts_lists_and_ends_one(environment, tmp_path: Path, capsys) -> None:
    path, env = environment
    registry, first, second = two_rules(env)
    args = ["--config", str(path)]
    assert main(["deploy", first, *args]) == 0
    assert main(["deploy", second, "--canary", "0.25", *args]) == 0
    assert f"canary: {second} serves 25% of episodes beside {first}" in capsys.readouterr().out
    state = pointer(env)
    assert state["current"] == first
    assert (state["canary"]["version"], state["canary"]["share"], state["canary"]["baseline"]) == (
        second,
        0.25,
        first,
    )
    assert main(["deploy", "--list", *args]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[first].split()[1] == "deployed" and rows[second].split()[1:3] == ["canary", "25%"]
    assert main(["deploy", second, "--canary", "1.5", *args]) == 1
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["deploy", "--end-canary", *args]) == 0
    assert pointer(env)["canary"] is None and pointer(env)["current"] == first
    assert main(["deploy", "--end-canary", *args]) == 1
    assert "no canary is running" in capsys.readouterr().err


def test_monitor_once_prints_the_latest_revision_of_each_window(environment, tmp_path: Path) -> None:
    path, env = environment
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def window(version: str, revision: int, decisions: int, sends: int, alerts: list[str]) -> MetricsWindow:
        return MetricsWindow(
            window_start=start,
            window_end=start + timedelta(minutes=1),
            model_version=version,
            revision=revision,
            decisions=decisions,
            action_counts={"send": sends, "dont_send": decisions - sends},
            rewards=decisions // 2,
            reward_sum=decisions / 8,
            mean_reward=0.25,
            min_propensity=0.05,
            alerts=alerts,
        )

    producer = KafkaProducer(bootstrap_servers=env.bootstrap_servers, acks="all")
    try:
        for record in (
            window("m0001-aaaaaaaa", 1, 10, 5, []),
            window("m0001-aaaaaaaa", 2, 40, 10, []),  # a later revision of the same window
            window("m0002-bbbbbbbb", 1, 20, 20, ["low_propensity: min 0.05 < 0.1"]),
        ):
            producer.send(env.config.topics.metrics, value=record.to_json_bytes())
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)

    shown = streamrl("monitor", "--once", "--config", str(path), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:4] == ["window_start", "(UTC)", "model_version", "rev"]
    assert len(lines) == 3
    assert lines[1].split() == [
        "2026-11-23", "10:00:00", "m0001-aaaaaaaa", "2", "40", "dont_send:75%", "send:25%", "20", "0.2500",
        "0.0500", "-",
    ]  # fmt: skip
    assert lines[2].split()[2:5] == ["m0002-bbbbbbbb", "1", "20"]
    assert lines[2].split()[-1] == "low_propensity"


def _first_slot(rng: np.random.Generator) -> dict[str, float]:
    """A user's context at the day's first slot (apps.notifications.FEATURE_NAMES)."""
    return {
        "active_days_7d": float(rng.integers(0, 8)),
        "notif_ctr_30d": float(rng.uniform(0.0, 0.3)),
        "tenure_days": float(rng.integers(1, 1000)),
        "slot": 0.0,
        "sent_previous_slot": 0.0,
    }


def _reward(features: dict[str, float], action: str) -> float:
    """A notification pays off for quiet users who were not just notified; otherwise it annoys."""
    if action != SEND:
        return 0.0
    return 1.0 if features["active_days_7d"] <= 2 and not features["sent_previous_slot"] else -0.2


@pytest.mark.e2e
def test_serve_and_stream_then_refresh(environment, tmp_path: Path) -> None:
    """serve decides over HTTP, stream turns decisions + rewards into timelines, refresh learns from them."""
    path, env = environment
    args = ["--config", str(path)]
    rng = np.random.default_rng(7)
    sent: dict[str, tuple[dict, float]] = {}  # request_id -> (response, reward)

    with running("stream", "stream", *args, cwd=tmp_path) as job:  # first: Spark is the slowest to start
        registry = ModelRegistry(env.registry_dir)
        rule = register_rule_policy(registry, NotificationSimConfig()).version
        registry.deploy(rule, "day 0")
        with running("serve", "serve", *args, cwd=tmp_path) as serve:

            def serving_rule() -> bool:
                try:
                    health = httpx.get(f"{env.serving_url}/healthz", timeout=2)
                except httpx.TransportError:
                    return False
                return health.status_code == 200 and health.json()["model_version"] == rule

            wait_for("GET /healthz serving the rule", serving_rule, 90, serve)
            with (
                httpx.Client(base_url=env.serving_url, timeout=30) as client,
                EventLogger(env.bootstrap_servers, env.config.topics) as events,
            ):

                def observe(response: dict, context: dict[str, float]) -> None:
                    """What the app observes right after acting (well inside the attribution window)."""
                    value = _reward(context, response["action"])
                    event = RewardEvent(
                        request_id=response["request_id"], timestamp=datetime.now(UTC), reward=value
                    )
                    events.log_reward(event)
                    sent[response["request_id"]] = (response, value)

                first = [_first_slot(rng) for _ in range(USERS)]
                batch = client.post(
                    "/v1/act/batch",
                    json={
                        "requests": [
                            {
                                "entity_id": f"user-{u}",
                                "mdp_id": f"user-{u}",
                                "sequence_number": 0,
                                "request_id": f"r-{u}-0",
                                "context_features": first[u],
                                "possible_actions": list(ACTIONS),
                            }
                            for u in range(USERS)
                        ]
                    },
                )
                assert batch.status_code == 200, batch.text
                responses = batch.json()["responses"]
                for response, context in zip(responses, first, strict=True):
                    observe(response, context)
                for u in range(USERS):  # the next slot one request at a time, as an app would
                    context = {
                        **first[u],
                        "slot": 1.0,
                        "sent_previous_slot": float(responses[u]["action"] == SEND),
                    }
                    one = client.post(
                        "/v1/act",
                        json={
                            "entity_id": f"user-{u}",
                            "sequence_number": 1,
                            "request_id": f"r-{u}-1",
                            "context_features": context,
                            "possible_actions": list(ACTIONS),
                        },
                    )
                    assert one.status_code == 200, one.text
                    observe(one.json(), context)
                events.flush(timeout_s=10)
            assert {response["model_version"] for response, _ in sent.values()} == {rule}
            assert stop(serve) == 0, log_tail("serve", tmp_path)  # after flushing its decision log

        output_dir = env.stream_config().output_dir
        wait_for(
            f"{2 * USERS} timeline rows in {output_dir}",
            lambda: len(load_timelines(output_dir)) >= 2 * USERS,
            150,
            job,
        )
        assert stop(job) == 0, log_tail("stream", tmp_path)

    timelines = load_timelines(output_dir)
    assert sorted(timelines["request_id"]) == sorted(sent)
    for row in timelines.itertuples():
        response, reward = sent[row.request_id]
        assert (row.action, row.action_probability, row.model_version) == (
            response["action"],
            pytest.approx(response["action_probability"]),
            rule,
        )
        assert row.reward_observed and row.reward == pytest.approx(reward)
        assert row.not_terminal == (row.sequence_number == 0)
        if row.not_terminal:
            assert row.next_action == sent[row.request_id[:-1] + "1"][0]["action"]

    refreshed = streamrl("refresh", *args, "--actions", ",".join(ACTIONS), cwd=tmp_path, timeout_s=300)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    out = refreshed.stdout
    assert f"training on {2 * USERS} rows; evaluating on {2 * USERS} rows logged by {rule}" in out
    candidate = registry.list_versions()[-1]
    assert candidate != rule and registry.metadata(candidate).algorithm == "dqn"
    report = json.loads((env.reports_dir / candidate / "cpe_report.json").read_text(encoding="utf-8"))
    gate = json.loads((env.reports_dir / candidate / "gate.json").read_text(encoding="utf-8"))
    assert report["verdict"] in out
    outcome = "deployed" if gate["approved"] else "rejected"
    assert f"candidate {candidate}: {outcome}" in out
    steps = [line.split(": ")[0].split()[-1] for line in out.splitlines() if line.startswith("refresh ")]
    assert steps[:3] == ["1/3", "2/3", "3/3"]  # each step announced as it starts
    assert pointer(env)["current"] == (candidate if gate["approved"] else rule)


def test_version_list_shows_each_kinds_action_space(tmp_path: Path) -> None:
    from infra.commands.deploy import format_versions
    from tests.serving import _kind_models as km

    registry = ModelRegistry(tmp_path / "registry")
    parametric = km.parametric().register(registry)
    continuous = km.continuous().register(registry)
    rows = {line.split()[0]: line for line in format_versions(registry).splitlines()[1:]}
    assert "candidates(price,quality)" in rows[parametric]
    assert "torque[-2,2],gain[0,1]" in rows[continuous]


@pytest.mark.faults
def test_stream_sigkilled_mid_batch_resumes_exactly_once(environment, tmp_path: Path) -> None:
    """`streamrl stream` SIGKILLed (its whole process group, Spark's JVM included) while batches run,
    events produced while it is down, then restarted: every decision becomes exactly one row."""
    path, env = environment
    args = ["--config", str(path)]
    output_dir = env.stream_config().output_dir
    produced: list[str] = []

    def wave(name: str, mdps: int) -> None:
        now = datetime.now(UTC)
        with EventLogger(env.bootstrap_servers, env.config.topics) as events:
            for m in range(mdps):
                for seq in range(2):
                    request_id = f"{name}{m}-{seq}"
                    events.log_decision(
                        DecisionEvent(
                            request_id=request_id,
                            entity_id=f"user-{name}{m}",
                            mdp_id=f"{name}{m}",
                            sequence_number=seq,
                            timestamp=now + timedelta(milliseconds=seq),
                            context_features={"slot": float(seq)},
                            possible_actions=list(ACTIONS),
                            action=ACTIONS[0],
                            action_probability=0.5,
                            model_version="rule",
                        )
                    )
                    events.log_reward(RewardEvent(request_id=request_id, timestamp=now, reward=1.0))
                    produced.append(request_id)
            events.flush(timeout_s=10)

    def rows() -> int:
        return len(load_timelines(output_dir)) if output_dir.exists() else 0

    wave("a", 30)
    with running("stream", "stream", *args, cwd=tmp_path) as job:
        wait_for("the first timeline rows", lambda: rows() > 0, 150, job)
        wave("b", 30)  # arrives while batches run
        time.sleep(1.5)  # about one trigger interval: the kill lands while a batch is under way
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    wave("c", 30)  # produced while the job is down
    with running("stream-again", "stream", *args, cwd=tmp_path) as job:
        wait_for(f"{len(produced)} timeline rows", lambda: rows() >= len(produced), 150, job)
        time.sleep(3.0)  # a few more batches: nothing may be written twice
        assert stop(job) == 0, log_tail("stream-again", tmp_path)

    timelines = load_timelines(output_dir)
    assert len(timelines) == len(produced) == 180
    assert not timelines.duplicated(["mdp_id", "sequence_number"]).any()
    assert sorted(timelines["request_id"]) == sorted(produced)
    assert timelines["reward"].sum() == 180.0
