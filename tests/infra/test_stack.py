"""The local stack on real processes: start, health, data path, idempotence, failures, stop."""

from __future__ import annotations

import os
import random
import socket
import uuid
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from contracts import Topics
from infra.cli import main
from infra.stack import LocalStack, StackError
from infra.stack_config import WEED_PORT_NAMES, BrokerStorage, StackConfig, StackConfigError
from stream.topics import ensure_topics
from tests.helpers import consume_all, free_port, stack_config_on_free_ports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _service_states(out: str) -> dict[str, str]:
    """SERVICE → STATE cell of the status table in `out` (whitespace-separated columns)."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["SERVICE", "STATE"])
    states = {}
    for line in lines[header + 1 :]:
        cells = line.split()
        if not cells:
            break
        states[cells[0]] = cells[1]
    return states


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block(size: int) -> int:
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        if all(_port_free(base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports found")


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    try:
        for value in values:
            producer.send(topic, value=value, key=b"k").get(timeout=10)
    finally:
        producer.close()


def test_up_serves_kafka_and_redis_then_down_leaves_no_process(tmp_path: Path) -> None:
    stack = LocalStack(stack_config_on_free_ports(tmp_path / "stack"))
    try:
        statuses = stack.up()
        assert [s.name for s in statuses] == ["redis", "broker"]
        assert all(s.healthy and s.pid is not None for s in statuses)
        pids = [s.pid for s in statuses]

        topic = f"smoke-{uuid.uuid4().hex[:8]}"
        ensure_topics(
            stack.bootstrap_servers, Topics(decisions=topic, rewards=topic, dead_letters=topic, metrics=topic)
        )
        _produce(stack.bootstrap_servers, topic, [b"a", b"b", b"c"])
        assert [r.value for r in consume_all(stack.bootstrap_servers, topic)] == [b"a", b"b", b"c"]

        client = redis.Redis.from_url(stack.redis_url)
        client.set("streamrl:test", "1")
        assert client.get("streamrl:test") == b"1"
        client.close()
        assert 'save ""' in (tmp_path / "stack" / "redis.conf").read_text()
    finally:
        stopped = stack.down()
    assert stopped == ["broker", "redis"]
    assert not any(_alive(pid) for pid in pids)
    assert _port_free(stack.config.broker_port) and _port_free(stack.config.redis_port)
    assert [s.pid for s in stack.status()] == [None, None]
    assert not list((tmp_path / "stack").glob("*.pid"))


def test_up_twice_is_a_no_op_and_stale_pid_files_are_never_signalled(tmp_path: Path) -> None:
    stack = LocalStack(stack_config_on_free_ports(tmp_path / "stack"))
    state = tmp_path / "stack"
    state.mkdir()
    # A stale PID file pointing at a live process that is not ours (this test process).
    (state / "broker.pid").write_text(f"{os.getpid()}\n/usr/bin/tansu\n")
    try:
        first = {s.name: s.pid for s in stack.up()}
        assert first["broker"] != os.getpid()
        second = {s.name: s.pid for s in stack.up()}
        assert second == first
        assert all(s.healthy for s in stack.status())
    finally:
        stack.down()
    assert stack.down() == []  # nothing left to stop; and this process is still alive


def test_port_in_use_gives_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        stack = LocalStack(stack_config_on_free_ports(tmp_path / "stack", broker_port=taken))
        with pytest.raises(StackError) as info:
            stack.up()
    message = str(info.value)
    assert info.value.service == "broker"
    assert (
        f"127.0.0.1:{taken}" in message and "already in use" in message and "STREAMRL_BROKER_PORT" in message
    )
    # Redis started before the broker failed; it must have been stopped again.
    assert all(s.pid is None for s in stack.status())
    assert _port_free(stack.config.redis_port)


def test_config_from_env_names_the_bad_variable(tmp_path: Path) -> None:
    env = {
        "STREAMRL_BROKER_PORT": "19555",
        "STREAMRL_BROKER_STORAGE": "s3",
        "STREAMRL_STATE_DIR": str(tmp_path),
    }
    config = StackConfig.from_env(env)
    assert config.broker_storage is BrokerStorage.S3
    assert config.bootstrap_servers == "127.0.0.1:19555"
    assert (
        config.s3_endpoint == f"http://127.0.0.1:{config.weed_port_base + WEED_PORT_NAMES.index('s3.port')}"
    )
    with pytest.raises(StackConfigError, match="STREAMRL_BROKER_STORAGE='kafka'"):
        StackConfig.from_env({"STREAMRL_BROKER_STORAGE": "kafka"})
    with pytest.raises(StackConfigError, match="both use port"):
        StackConfig.from_env({"STREAMRL_BROKER_PORT": "16379"})


def test_cli_stack_up_status_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("STREAMRL_BROKER_PORT", str(free_port()))
    monkeypatch.setenv("STREAMRL_REDIS_PORT", str(free_port()))
    monkeypatch.setenv("STREAMRL_STATE_DIR", str(tmp_path / "stack"))
    try:
        assert main(["stack", "up"]) == 0
        assert _service_states(capsys.readouterr().out) == {"redis": "healthy", "broker": "healthy"}
        assert main(["stack", "status"]) == 0
        assert _service_states(capsys.readouterr().out) == {"redis": "healthy", "broker": "healthy"}
    finally:
        assert main(["stack", "down"]) == 0
    capsys.readouterr()
    assert main(["stack", "status"]) == 3  # not healthy: stopped
    assert _service_states(capsys.readouterr().out) == {"redis": "stopped", "broker": "stopped"}
    monkeypatch.setenv("STREAMRL_BROKER_PORT", "not-a-port")
    assert main(["stack", "status"]) == 1
    assert "STREAMRL_BROKER_PORT='not-a-port'" in capsys.readouterr().err


def test_s3_storage_keeps_records_and_redis_data_across_restart(tmp_path: Path) -> None:
    config = stack_config_on_free_ports(
        tmp_path / "stack", broker_storage="s3", weed_port_base=_free_port_block(len(WEED_PORT_NAMES))
    )
    stack = LocalStack(config)
    topic = f"durable-{uuid.uuid4().hex[:8]}"
    try:
        stack.up()
        assert [s.name for s in stack.status()] == ["redis", "s3", "broker"]
        ensure_topics(
            stack.bootstrap_servers, Topics(decisions=topic, rewards=topic, dead_letters=topic, metrics=topic)
        )
        _produce(stack.bootstrap_servers, topic, [b"one", b"two"])
        client = redis.Redis.from_url(stack.redis_url)
        client.set("streamrl:durable", "yes")
        client.close()
        stack.down()

        stack.up()
        assert [r.value for r in consume_all(stack.bootstrap_servers, topic)] == [b"one", b"two"]
        client = redis.Redis.from_url(stack.redis_url)
        assert client.get("streamrl:durable") == b"yes"
        client.close()
    finally:
        stack.down()
