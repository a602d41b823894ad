"""Where the local stack runs: ports, storage mode and the directory holding its state.

Read from `STREAMRL_*` environment variables (e.g. `STREAMRL_BROKER_PORT=19092`) so the CLI, tests
and a shell session can point at the same stack without a config file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts import StreamrlError

ENV_PREFIX = "STREAMRL_"


class BrokerStorage(StrEnum):
    """Where the broker keeps records: lost on stop (`memory`) or in a local S3 store (`s3`).

    `s3` is the durable mode: records survive a stop and restart. A broker SIGKILLed mid-stream can
    lose writes in flight that an idempotent producer was told were stored, or store twice those of
    a producer without idempotence; see docs/operations.md. The bundled Tansu has no PostgreSQL engine.
    """

    MEMORY = "memory"
    S3 = "s3"


class StackConfigError(StreamrlError):
    """A `STREAMRL_*` variable or config value is invalid."""


WEED_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class StackConfig(BaseModel):
    """Local stack settings; every field can be set from `STREAMRL_<FIELD>` (see `from_env`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    host: str = "127.0.0.1"
    broker_port: int = Field(default=19092, ge=1, le=65535)
    redis_port: int = Field(default=16379, ge=1, le=65535)
    broker_storage: BrokerStorage = BrokerStorage.MEMORY
    state_dir: Path = Path(".streamrl/stack")
    # s3 mode only: `weed mini` uses ten consecutive ports from here, in WEED_PORT_NAMES order.
    weed_port_base: int = Field(default=18330, ge=1, le=65535 - len(WEED_PORT_NAMES))
    s3_bucket: str = Field(default="streamrl", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # Local development credentials for the local S3 store; override from the environment.
    s3_access_key_id: str = "streamrl"
    s3_secret_access_key: str = "streamrl-local-secret"
    # The environment variable holding the local Redis's password (requirepass); None: no password.
    # The feature store's clients read the same variable (`feature_store.redis_password_env`).
    redis_password_env: str | None = Field(default=None, min_length=1)
    startup_timeout_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _ports_distinct(self) -> StackConfig:
        used = {"broker_port": self.broker_port, "redis_port": self.redis_port}
        if self.broker_storage is BrokerStorage.S3:
            used.update({f"weed {name}": port for name, port in self.weed_ports.items()})
        seen: dict[int, str] = {}
        for name, port in used.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} both use port {port}; give each service its own")
            seen[port] = name
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> StackConfig:
        """Build from `STREAMRL_<FIELD>` variables; keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            if name == "schema_version":
                continue
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}={err.get('input')!r}: {err['msg']}"
                for err in exc.errors()
            )
            raise StackConfigError(f"invalid local stack settings: {problems}") from exc

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def weed_ports(self) -> dict[str, int]:
        """The `weed mini` port flags and their values (s3 mode)."""
        return {name: self.weed_port_base + i for i, name in enumerate(WEED_PORT_NAMES)}

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.weed_ports['s3.port']}"
