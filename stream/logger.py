"""App-side decision/reward logging to Kafka that never drops an event silently.

Sends are asynchronous (an idempotent producer: acks=all, retries without duplicates); every send's
outcome is tracked, and `flush()` raises `EventLogError` naming each event that was not delivered, so
the caller can retry or alert. `log_decision_sync` confirms a single event before returning.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from contracts import DEFAULT_TOPICS, DecisionEvent, RewardEvent, StreamrlError, Topics

log = logging.getLogger(__name__)

# Pinned so the producer does not contact the broker in its constructor: an app can start while
# the broker is down, and problems surface per event (idempotent produce needs >= 0.11).
_API_VERSION = (2, 8)

_E = TypeVar("_E", bound=BaseModel)


class EventKind(StrEnum):
    DECISION = "decision"
    REWARD = "reward"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class UndeliveredEvent:
    """One event the broker did not acknowledge, with why; `event` is kept so callers can resend."""

    kind: EventKind
    topic: str
    request_id: str | None
    cause: str
    event: DecisionEvent | RewardEvent | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored an event."""

    topic: str
    partition: int
    offset: int


class EventLogError(StreamrlError):
    """Events could not be delivered (`undelivered` lists each one) or could not be sent at all."""

    def __init__(self, message: str, undelivered: list[UndeliveredEvent] | None = None) -> None:
        super().__init__(message)
        self.undelivered = list(undelivered or [])


class InvalidEventError(EventLogError):
    """The object passed to a `log_*` method is not a valid event of the expected type; nothing was sent."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    kind: EventKind
    topic: str
    request_id: str | None
    event: DecisionEvent | RewardEvent | None


class EventLogger:
    """Log `DecisionEvent`s (keyed by mdp_id) and `RewardEvent`s (keyed by request_id) to Kafka."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics = DEFAULT_TOPICS,
        *,
        max_retries: int = 10,
        delivery_timeout_s: float = 30.0,
        metadata_timeout_s: float = 5.0,
        linger_ms: int = 5,
    ) -> None:
        request_timeout_ms = min(10_000, int(delivery_timeout_s * 1000) - linger_ms)
        if request_timeout_ms <= 0:
            raise ValueError(f"delivery_timeout_s must exceed linger_ms, got {delivery_timeout_s} s")
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            api_version=_API_VERSION,
            enable_idempotence=True,
            acks="all",
            retries=max_retries,
            max_in_flight_requests_per_connection=5,
            linger_ms=linger_ms,
            delivery_timeout_ms=int(delivery_timeout_s * 1000),
            request_timeout_ms=request_timeout_ms,
            max_block_ms=int(metadata_timeout_s * 1000),
        )
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._in_flight: dict[int, _InFlight] = {}
        self._failed: list[UndeliveredEvent] = []
        self._closed = False

    # ------------------------------------------------------------------ logging

    def log_decision(self, event: DecisionEvent) -> None:
        """Queue a decision for delivery; failures are reported by the next `flush()`."""
        event = _validated(event, DecisionEvent, "log_decision")
        self._send_tracked(
            EventKind.DECISION, self.topics.decisions, event.mdp_id, event.to_json_bytes(), event
        )

    def log_reward(self, event: RewardEvent) -> None:
        """Queue a reward for delivery; failures are reported by the next `flush()`."""
        event = _validated(event, RewardEvent, "log_reward")
        self._send_tracked(
            EventKind.REWARD, self.topics.rewards, event.request_id, event.to_json_bytes(), event
        )

    def log_decision_sync(self, event: DecisionEvent, timeout_s: float = 10.0) -> Delivery:
        """Send one decision and wait for the broker's acknowledgement; raises `EventLogError` if none."""
        event = _validated(event, DecisionEvent, "log_decision_sync")
        return self._send_sync(
            EventKind.DECISION, self.topics.decisions, event.mdp_id, event.to_json_bytes(), event, timeout_s
        )

    def log_reward_sync(self, event: RewardEvent, timeout_s: float = 10.0) -> Delivery:
        """Send one reward and wait for the broker's acknowledgement; raises `EventLogError` if none."""
        event = _validated(event, RewardEvent, "log_reward_sync")
        return self._send_sync(
            EventKind.REWARD, self.topics.rewards, event.request_id, event.to_json_bytes(), event, timeout_s
        )

    def publish_raw(self, topic: str, value: bytes, key: bytes | str | None = None) -> None:
        """Queue arbitrary bytes (tests and tools, e.g. malformed events); tracked like any event."""
        if not isinstance(value, bytes | bytearray):
            raise InvalidEventError(f"publish_raw expects bytes for value, got {type(value).__name__}")
        self._send_tracked(EventKind.RAW, topic, key, bytes(value), None)

    # ------------------------------------------------------------------ delivery

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued event; raise `EventLogError` listing each one not delivered.

        Failed events are reported once (they are cleared from the logger). Events still unacknowledged
        at the timeout are listed too but stay tracked: they may yet be delivered.
        """
        timed_out = False
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError:
            timed_out = True
        with self._lock:
            undelivered, self._failed = self._failed, []
            if timed_out or self._in_flight:
                cause = f"not acknowledged within flush timeout {timeout_s} s (may still be delivered)"
                undelivered += [
                    UndeliveredEvent(r.kind, r.topic, r.request_id, cause, r.event)
                    for r in self._in_flight.values()
                ]
        if undelivered:
            raise EventLogError(_describe(undelivered, self.bootstrap_servers), undelivered)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, then release the producer; raises like `flush()` if events were not delivered."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except EventLogError as close_error:  # keep the body's exception; still never silent
            log.error("%s", close_error)

    # ------------------------------------------------------------------ internals

    def _send_tracked(
        self,
        kind: EventKind,
        topic: str,
        key: bytes | str | None,
        value: bytes,
        event: DecisionEvent | RewardEvent | None,
    ) -> None:
        record = _InFlight(kind, topic, getattr(event, "request_id", None), event)
        token = next(self._ids)
        with self._lock:
            self._in_flight[token] = record
        try:
            future = self._producer.send(topic, value=value, key=_key_bytes(key))
        except KafkaError as exc:  # e.g. no metadata within metadata_timeout_s
            self._on_failure(token, exc)
            return
        except Exception:
            with self._lock:
                del self._in_flight[token]
            raise
        future.add_callback(self._on_success, token)
        future.add_errback(self._on_failure, token)

    def _on_success(self, token: int, _metadata: object) -> None:
        with self._lock:
            self._in_flight.pop(token, None)

    def _on_failure(self, token: int, exc: BaseException) -> None:
        with self._lock:
            record = self._in_flight.pop(token, None)
            if record is not None:
                cause = f"{type(exc).__name__}: {exc}"
                self._failed.append(
                    UndeliveredEvent(record.kind, record.topic, record.request_id, cause, record.event)
                )

    def _send_sync(
        self,
        kind: EventKind,
        topic: str,
        key: str,
        value: bytes,
        event: DecisionEvent | RewardEvent,
        timeout_s: float,
    ) -> Delivery:
        try:
            metadata = self._producer.send(topic, value=value, key=_key_bytes(key)).get(timeout=timeout_s)
        except KafkaError as exc:
            undelivered = [
                UndeliveredEvent(kind, topic, event.request_id, f"{type(exc).__name__}: {exc}", event)
            ]
            raise EventLogError(_describe(undelivered, self.bootstrap_servers), undelivered) from exc
        return Delivery(metadata.topic, metadata.partition, metadata.offset)


def _validated(event: object, expected: type[_E], method: str) -> _E:
    """Re-validate, so objects built with `model_construct` or of the wrong type never reach Kafka."""
    if not isinstance(event, expected):
        raise InvalidEventError(
            f"{method} expects a {expected.__name__}, got {type(event).__name__}; "
            f"build one with {expected.__name__}(...) (it validates the fields)"
        )
    try:
        return expected.model_validate(event.model_dump())
    except ValidationError as exc:
        raise InvalidEventError(f"{method}: invalid {expected.__name__}, nothing was sent: {exc}") from exc


def _key_bytes(key: bytes | str | None) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key


def _describe(undelivered: list[UndeliveredEvent], bootstrap_servers: str) -> str:
    by_cause: dict[str, list[str]] = defaultdict(list)
    for item in undelivered:
        by_cause[item.cause].append(f"{item.kind.value}:{item.request_id or '-'}@{item.topic}")
    lines = [f"{len(undelivered)} event(s) not delivered to the Kafka broker at {bootstrap_servers}:"]
    lines += [f"  {cause}: {', '.join(events)}" for cause, events in by_cause.items()]
    lines.append("resend them from EventLogError.undelivered; is the broker up? (`streamrl stack status`)")
    return "\n".join(lines)
