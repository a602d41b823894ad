"""The monitor's faust credentials come from the same `kafka:` settings every other client reads;
faust's own translation to aiokafka keywords is the independent check."""

from __future__ import annotations

from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from contracts import KafkaSecurity
from monitoring.app import _credentials


def test_plaintext_gives_faust_no_credentials():
    assert _credentials(KafkaSecurity()) is None


def test_scram_settings_become_the_aiokafka_login_faust_sends(monkeypatch):
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret")
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        username="monitor",
        password_env="TEST_KAFKA_PASSWORD",
    )
    assert credentials_to_aiokafka_auth(_credentials(security)) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "monitor",
        "sasl_plain_password": "s3cret",
        "ssl_context": None,
    }
