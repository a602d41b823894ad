"""What every example app needs to talk to streamrl: JSON batches to its serving routes over HTTP,
and reward events to its Kafka topic. HTTP and Kafka only — it imports no streamrl stage, so an
app written in another language does the same with its own clients (docs/onboarding.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
from kafka import KafkaProducer
from kafka.errors import KafkaError

_HINT = "is `streamrl up` serving this app's manifest?"


class AppClientError(Exception):
    """Serving or Kafka failed the app; each app's own error type derives from it."""


def post_batches(
    client: httpx.Client, route: str, key: str, bodies: Sequence[Mapping[str, Any]], batch: int
) -> list[dict[str, Any]]:
    """POST `bodies` in batches of `batch` as `{"schema_version": 1, key: [...]}`; every item of the
    responses' `responses`, in order."""
    out: list[dict[str, Any]] = []
    for first in range(0, len(bodies), batch):
        part = list(bodies[first : first + batch])
        try:
            response = client.post(route, json={"schema_version": 1, key: part})
        except httpx.HTTPError as exc:
            raise AppClientError(f"POST {client.base_url}{route} failed: {exc!r}; {_HINT}") from exc
        if response.status_code != 200:
            raise AppClientError(
                f"POST {client.base_url}{route} answered {response.status_code}: {response.text[:500]}; {_HINT}"
            )
        out.extend(response.json()["responses"])
    return out


class RewardProducer:
    """Reward events as JSON to one topic, keyed by request id (the join key), `acks=all`.

    `close()` flushes (waiting up to `timeout_s`) and raises `AppClientError` unless every event
    was acknowledged; as a context manager it does so on a clean exit and only closes after an error.
    """

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        try:  # `api_version` is left for the client to ask the broker (Tansu)
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        except KafkaError as exc:
            raise AppClientError(
                f"cannot reach Kafka at {bootstrap}: {exc!r}; is the local stack up?"
            ) from exc
        self._futures: list[Any] = []

    def send(self, event: Mapping[str, Any]) -> None:
        key = str(event["request_id"]).encode()
        self._futures.append(
            self._producer.send(self.topic, key=key, value=json.dumps(event).encode("utf-8"))
        )

    def close(self) -> None:
        """Flush, close, and raise unless every event sent was acknowledged."""
        try:
            self._producer.flush(timeout=self.timeout_s)
            failed = [f for f in self._futures if not f.is_done or f.failed()]
            if failed:
                first_error = next((f.exception for f in failed if f.is_done), "not delivered in time")
                raise AppClientError(
                    f"{len(failed)} of {len(self._futures)} reward events did not reach {self.topic!r} at "
                    f"{self.bootstrap}: {first_error!r}; is the local stack up?"
                )
        finally:
            self._producer.close(timeout=5)

    def __enter__(self) -> RewardProducer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._producer.close(timeout=5)
