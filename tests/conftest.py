"""Shared fixtures: a real local stack on free ports, fresh topics per test, and one SparkSession.

Everything is real (Tansu broker, redis-server, Spark local[2]); nothing is mocked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from contracts import Topics
from infra.stack import LocalStack
from stream.topics import ensure_topics
from tests.helpers import stack_config_on_free_ports


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Redis + Tansu (memory storage) for the whole session; `.bootstrap_servers`, `.redis_url`, `.config`."""
    stack = LocalStack(stack_config_on_free_ports(tmp_path_factory.mktemp("stack")))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture
def topics(local_stack: LocalStack) -> Topics:
    """Fresh, uniquely named topics (2 partitions each), created on the session broker."""
    suffix = uuid.uuid4().hex[:10]
    fresh = Topics(
        decisions=f"decisions-{suffix}",
        rewards=f"rewards-{suffix}",
        dead_letters=f"dead_letters-{suffix}",
        metrics=f"metrics-{suffix}",
    )
    ensure_topics(local_stack.bootstrap_servers, fresh, partitions=2)
    return fresh


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):  # -> pyspark.sql.SparkSession (imported lazily: slow)
    """One local[2] SparkSession for the session: UTC, 2 shuffle partitions, no UI, small memory."""
    from stream.spark import build_spark_session

    scratch = tmp_path_factory.mktemp("spark")
    session = build_spark_session(
        "local[2]",
        "streamrl-tests",
        {
            "spark.default.parallelism": "2",
            "spark.driver.memory": "1g",
            "spark.sql.warehouse.dir": str(scratch / "warehouse"),
            "spark.local.dir": str(scratch / "local"),
        },
    )
    try:
        yield session
    finally:
        session.stop()
