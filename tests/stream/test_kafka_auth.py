"""Kafka authentication through `KafkaSecurity`, against the local broker run with `--authentication`.

The bundled Tansu 0.6 enforces authentication but cannot let anyone in: its memory and s3 engines
store no SCRAM users (`tansu user create` answers success and saves nothing, so every login gets
"unknown-user"), PLAIN is not compiled in, and `--cert`/`--key` never start TLS (docs/security.md).
What can be shown for real, and is shown here: a client without credentials cannot write (the
broker drops it), and a client configured through `KafkaSecurity` performs the SASL exchange its
config names — the broker's answer ("unknown-user" to a SCRAM-SHA-512 login) proves the settings
reached the wire, through librdkafka (event logger) and kafka-python (topic admin) alike.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from contracts import DecisionEvent, KafkaSecurity, Topics
from infra.stack import _tansu_binary
from stream import EventLogError, EventLogger
from stream.topics import TopicSetupError, ensure_topics
from tests.helpers import free_port

TOPICS = Topics(
    decisions="auth.decisions", rewards="auth.rewards", dead_letters="auth.dead", metrics="auth.metrics"
)
SCRAM = KafkaSecurity(
    protocol="SASL_PLAINTEXT",
    sasl_mechanism="SCRAM-SHA-512",
    username="app",
    password_env="TEST_KAFKA_PASSWORD",
)


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory) -> Iterator[str]:
    """A Tansu broker that requires client authentication, on a free port."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("auth-broker") / "broker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(_tansu_binary()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
                "--authentication",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"the broker did not listen: {log_path.read_text()}"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _decision() -> DecisionEvent:
    return DecisionEvent(
        request_id="req-auth",
        entity_id="user-1",
        mdp_id="mdp-auth",
        sequence_number=0,
        timestamp=datetime(2026, 12, 1, tzinfo=UTC),
        context_features={"age": 1.0},
        possible_actions=["a", "b"],
        action="a",
        action_probability=0.5,
        model_version="v1",
    )


def _log_one(bootstrap: str, security: KafkaSecurity) -> EventLogError:
    logger = EventLogger(bootstrap, TOPICS, delivery_timeout_s=2.0, security=security)
    logger.log_decision(_decision())
    with pytest.raises(EventLogError) as refused:
        logger.close(timeout_s=10.0)
    return refused.value


def test_a_client_without_credentials_cannot_write(auth_broker, caplog):
    caplog.set_level(logging.DEBUG, logger="stream.logger")
    refused = _log_one(auth_broker, KafkaSecurity())
    assert [u.request_id for u in refused.undelivered] == ["req-auth"]
    assert "timed out" in refused.undelivered[0].cause.lower(), refused.undelivered[0].cause
    # The broker answers nothing but ApiVersions and SASL before a login: it drops the connection.
    assert "unknown-user" not in caplog.text
    with pytest.raises(TopicSetupError, match="cannot reach the Kafka broker"):
        ensure_topics(auth_broker, TOPICS, timeout_s=2.0)


def test_kafka_security_settings_reach_the_broker_as_a_scram_login(auth_broker, caplog, monkeypatch):
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "not-a-real-user")
    caplog.set_level(logging.DEBUG, logger="stream.logger")
    refused = _log_one(auth_broker, SCRAM)
    assert [u.request_id for u in refused.undelivered] == ["req-auth"]
    # librdkafka ran the SCRAM-SHA-512 exchange and reports the broker's verdict on user "app".
    assert "SASL SCRAM authentication failed" in caplog.text and "unknown-user" in caplog.text, caplog.text
    with pytest.raises(TopicSetupError):
        ensure_topics(auth_broker, TOPICS, timeout_s=2.0, security=SCRAM)


def test_the_same_settings_with_sasl_against_a_broker_without_it_are_refused(
    local_stack, caplog, monkeypatch
):
    """The other direction: SASL configured, the broker not asking for it — the client says so."""
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "pw")
    caplog.set_level(logging.DEBUG, logger="stream.logger")
    refused = _log_one(local_stack.bootstrap_servers, SCRAM)
    assert [u.request_id for u in refused.undelivered] == ["req-auth"]
    assert "Unsupported SASL mechanism" in caplog.text, caplog.text
