"""How every Kafka client of streamrl reaches the brokers: the security settings, one model.

The event logger, the stream's reader and dead-letter producer (confluent-kafka), the stream's
planner, topic admin and status probes (kafka-python) and the monitor (faust, on aiokafka) each
spell the same settings differently; `KafkaSecurity` holds them once, `_CLIENT_KEYS` is the table
of spellings, and faust gets its credentials object from `faust_credentials` in `monitoring/`.
The password is never a field: it is read from an environment variable or a file when a client is
built, so configs, logs and reports never carry it.
"""

from __future__ import annotations

import os
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.errors import StreamrlError


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class KafkaSecurityError(StreamrlError):
    """The Kafka credentials a config names cannot be read."""


# setting → (librdkafka key, kafka-python keyword)
_CLIENT_KEYS: dict[str, tuple[str, str]] = {
    "protocol": ("security.protocol", "security_protocol"),
    "sasl_mechanism": ("sasl.mechanism", "sasl_mechanism"),
    "username": ("sasl.username", "sasl_plain_username"),
    "password": ("sasl.password", "sasl_plain_password"),
    "ssl_ca_file": ("ssl.ca.location", "ssl_cafile"),
    "ssl_cert_file": ("ssl.certificate.location", "ssl_certfile"),
    "ssl_key_file": ("ssl.key.location", "ssl_keyfile"),
}
_CLIENTS = {"confluent": 0, "kafka_python": 1}
Client = Literal["confluent", "kafka_python"]


class KafkaSecurity(BaseModel):
    """`kafka:` in the environment file. The default, PLAINTEXT, is the local stack's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(
        default=None, min_length=1, description="the environment variable holding the SASL password"
    )
    password_file: Path | None = Field(default=None, description="a file holding the SASL password")
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)

    @property
    def tls(self) -> bool:
        return self.protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl_fields = {
            "username": self.username,
            "password_env": self.password_env,
            "password_file": self.password_file,
        }
        tls_fields = {
            "ssl_ca_file": self.ssl_ca_file,
            "ssl_cert_file": self.ssl_cert_file,
            "ssl_key_file": self.ssl_key_file,
        }
        if not self.sasl and any(v is not None for v in sasl_fields.values()):
            named = sorted(k for k, v in sasl_fields.items() if v is not None)
            raise ValueError(
                f"{named} are set but protocol is {self.protocol.value}; use SASL_PLAINTEXT or SASL_SSL"
            )
        if not self.tls and any(v is not None for v in tls_fields.values()):
            named = sorted(k for k, v in tls_fields.items() if v is not None)
            raise ValueError(f"{named} are set but protocol is {self.protocol.value}; use SSL or SASL_SSL")
        if self.sasl:
            if self.username is None:
                raise ValueError(f"protocol {self.protocol.value} needs `username`")
            if (self.password_env is None) == (self.password_file is None):
                raise ValueError(
                    f"protocol {self.protocol.value} needs exactly one of `password_env` (a variable name) "
                    "or `password_file`; the password itself never goes in the config"
                )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError(
                "`ssl_cert_file` and `ssl_key_file` go together (a client certificate and its key)"
            )
        return self

    def password(self) -> str | None:
        """The SASL password, read now from `password_env` or `password_file` (None without SASL)."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise KafkaSecurityError(
                    f"kafka.password_env names {self.password_env!r}, but that environment variable is "
                    "unset or empty; export the Kafka password in it"
                )
            return value
        if self.password_file is not None:
            try:
                value = self.password_file.read_text().strip()
            except OSError as exc:
                raise KafkaSecurityError(
                    f"kafka.password_file {str(self.password_file)!r} cannot be read: {exc.strerror}"
                ) from exc
            if not value:
                raise KafkaSecurityError(f"kafka.password_file {str(self.password_file)!r} is empty")
            return value
        return None

    def client_settings(self, client: Client) -> dict[str, Any]:
        """The settings for one client library, password included (read now); empty for PLAINTEXT."""
        if self.protocol is SecurityProtocol.PLAINTEXT:
            return {}
        values: dict[str, Any] = {"protocol": self.protocol.value}
        if self.sasl:
            values |= {
                "sasl_mechanism": self.sasl_mechanism.value,
                "username": self.username,
                "password": self.password(),
            }
        for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(self, name)
            if path is not None:
                values[name] = str(path)
        column = _CLIENTS[client]
        return {_CLIENT_KEYS[name][column]: value for name, value in values.items()}

    def ssl_context(self) -> ssl.SSLContext | None:
        """For clients that take a context (aiokafka, faust): the CA and client certificate."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=None if self.ssl_ca_file is None else str(self.ssl_ca_file)
        )
        if self.ssl_cert_file is not None and self.ssl_key_file is not None:
            context.load_cert_chain(str(self.ssl_cert_file), str(self.ssl_key_file))
        return context

    def describe(self) -> str:
        """One line for logs and errors, without the password."""
        if self.protocol is SecurityProtocol.PLAINTEXT:
            return "PLAINTEXT"
        who = f" {self.sasl_mechanism.value} as {self.username!r}" if self.sasl else ""
        return f"{self.protocol.value}{who}"


PLAINTEXT = KafkaSecurity()
