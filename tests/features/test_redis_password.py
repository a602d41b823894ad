"""A password-protected Redis (a real redis-server with requirepass; the local stack's own with
`stack.redis_password_env`): Feast and the raw reader both authenticate from an environment
variable, the password is never written to Feast's repo file nor echoed in an error."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import redis

from features import FeatureStoreConfig, build_feature_store
from features.online import RedisOnlineFeatureReader
from features.store import FeatureStoreError, OnlineFeatureReader, RedisReaderConfig, push_context_features
from infra.stack import LocalStack
from infra.stack_config import StackConfigError
from tests.helpers import stack_config_on_free_ports

PASSWORD = "s3cret-" + uuid.uuid4().hex[:12]
NAMES = ["f_age", "f_clicks"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def locked_redis(tmp_path: Path):
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port
    process.kill()
    process.wait(timeout=10)


def test_feast_and_the_raw_reader_authenticate_from_an_environment_variable(
    locked_redis, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    config = FeatureStoreConfig(
        repo_dir=tmp_path / "repo",
        offline_dir=tmp_path / "offline",
        project="locked",
        redis_connection=f"127.0.0.1:{locked_redis}",
        redis_password_env="TEST_REDIS_PASSWORD",
        feature_names=NAMES,
        online_reader=RedisReaderConfig(),
    )
    store = build_feature_store(config)
    repo_file = (config.repo_dir / "feature_store.yaml").read_text()
    assert PASSWORD not in repo_file and "password=${TEST_REDIS_PASSWORD}" in repo_file
    rows = pd.DataFrame(
        {
            "entity_id": ["a", "b"],
            "event_timestamp": [pd.Timestamp("2026-11-30T12:00Z")] * 2,
            "f_age": [31.0, 47.0],
            "f_clicks": [2.0, None],
        }
    )
    push_context_features(store, rows, offline=False)
    expected = [
        {"f_age": 31.0, "f_clicks": 2.0},
        {"f_age": 47.0, "f_clicks": None},
        {"f_age": None, "f_clicks": None},
    ]
    assert OnlineFeatureReader(store, config).get(["a", "b", "zz"]) == expected
    assert RedisOnlineFeatureReader(config).get(["a", "b", "zz"]) == expected

    monkeypatch.setenv("TEST_REDIS_PASSWORD", "wrong-" + PASSWORD)
    with pytest.raises(FeatureStoreError) as wrong:
        RedisOnlineFeatureReader(config).get(["a"])
    assert "WRONGPASS" in str(wrong.value) or "invalid" in str(wrong.value).lower(), str(wrong.value)
    assert PASSWORD not in str(wrong.value)

    monkeypatch.delenv("TEST_REDIS_PASSWORD")
    with pytest.raises(FeatureStoreError, match="environment variable TEST_REDIS_PASSWORD .* not set"):
        RedisOnlineFeatureReader(config)


def test_the_local_stack_runs_redis_with_the_password_it_is_given(tmp_path, monkeypatch) -> None:
    config = stack_config_on_free_ports(tmp_path / "stack", redis_password_env="TEST_STACK_REDIS_PASSWORD")
    monkeypatch.delenv("TEST_STACK_REDIS_PASSWORD", raising=False)
    with pytest.raises(StackConfigError, match="TEST_STACK_REDIS_PASSWORD, which is not set"):
        LocalStack(config).up()
    monkeypatch.setenv("TEST_STACK_REDIS_PASSWORD", PASSWORD)
    stack = LocalStack(config)
    stack.up()
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=config.host, port=config.redis_port).ping()
        with pytest.raises(redis.AuthenticationError):  # an unauthenticated write is refused
            redis.Redis(host=config.host, port=config.redis_port).set("streamrl:probe", "x")
        assert redis.Redis(host=config.host, port=config.redis_port, password=PASSWORD).ping()
    finally:
        stack.down()
