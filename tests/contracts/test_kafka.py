"""`KafkaSecurity`: the one config every Kafka client reads, checked against the clients themselves."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException, Producer
from kafka import KafkaAdminClient
from pydantic import ValidationError

from contracts import KafkaSecurity, KafkaSecurityError


def test_plaintext_adds_no_settings():
    assert KafkaSecurity().client_settings("confluent") == {}
    assert KafkaSecurity().client_settings("kafka_python") == {}
    assert KafkaSecurity().describe() == "PLAINTEXT"


def test_sasl_settings_read_the_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret")
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username="app",
        password_env="TEST_KAFKA_PASSWORD",
    )
    assert security.client_settings("confluent") == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app",
        "sasl.password": "s3cret",
    }
    assert security.client_settings("kafka_python") == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "app",
        "sasl_plain_password": "s3cret",
    }
    # The config and its description never carry the password.
    assert "s3cret" not in security.model_dump_json()
    assert "s3cret" not in security.describe()
    assert security.describe() == "SASL_PLAINTEXT SCRAM-SHA-512 as 'app'"


def test_password_file_is_read_and_stripped(tmp_path):
    secret = tmp_path / "kafka-password"
    secret.write_text("from-a-file\n")
    security = KafkaSecurity(protocol="SASL_SSL", username="app", password_file=secret)
    assert security.client_settings("confluent")["sasl.password"] == "from-a-file"
    assert security.client_settings("confluent")["security.protocol"] == "SASL_SSL"


def test_the_settings_are_names_each_client_accepts(monkeypatch, tmp_path):
    """librdkafka refuses an unknown property at construction and kafka-python an unknown keyword:
    both clients are built with every setting the table produces."""
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "pw")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        username="app",
        password_env="TEST_KAFKA_PASSWORD",
        ssl_ca_file=tmp_path / "ca.pem",
        ssl_cert_file=tmp_path / "cert.pem",
        ssl_key_file=tmp_path / "key.pem",
    )
    confluent = security.client_settings("confluent")
    assert len(confluent) == 7
    # The empty PEM files are refused when loaded, after every key name was accepted.
    with pytest.raises(KafkaException, match="ssl.ca.location failed: .*no certificate"):
        Producer({"bootstrap.servers": "127.0.0.1:1", **confluent})
    with pytest.raises(KafkaException, match="No such configuration property"):
        Producer({"bootstrap.servers": "127.0.0.1:1", "sasl.pasword": "x"})
    kafka_python = security.client_settings("kafka_python")
    assert set(kafka_python) <= set(KafkaAdminClient.DEFAULT_CONFIG)
    assert len(kafka_python) == 7


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "SASL_PLAINTEXT", "password_env": "X"}, "needs `username`"),
        ({"protocol": "SASL_PLAINTEXT", "username": "a"}, "exactly one of `password_env`"),
        (
            {"protocol": "SASL_PLAINTEXT", "username": "a", "password_env": "X", "password_file": "f"},
            "exactly one",
        ),
        ({"username": "a"}, "protocol is PLAINTEXT; use SASL_PLAINTEXT or SASL_SSL"),
        (
            {"protocol": "SASL_PLAINTEXT", "username": "a", "password_env": "X", "ssl_ca_file": "ca"},
            "use SSL",
        ),
        ({"protocol": "SSL", "ssl_cert_file": "c"}, "go together"),
        ({"protocol": "SASL", "username": "a"}, "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ({"password": "in-the-config"}, "Extra inputs are not permitted"),
    ],
)
def test_inconsistent_settings_are_refused_with_what_to_do(fields, message):
    with pytest.raises(ValidationError, match=message):
        KafkaSecurity.model_validate(fields)


def test_a_missing_password_names_the_variable_or_file(monkeypatch, tmp_path):
    monkeypatch.delenv("TEST_KAFKA_PASSWORD", raising=False)
    security = KafkaSecurity(protocol="SASL_PLAINTEXT", username="a", password_env="TEST_KAFKA_PASSWORD")
    with pytest.raises(KafkaSecurityError, match="'TEST_KAFKA_PASSWORD'.*unset or empty"):
        security.client_settings("confluent")
    missing = tmp_path / "nope"
    security = KafkaSecurity(protocol="SASL_PLAINTEXT", username="a", password_file=missing)
    with pytest.raises(KafkaSecurityError, match="cannot be read: No such file"):
        security.password()
