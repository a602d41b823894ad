"""App-side decision/reward logging to Kafka that never drops an event silently.

Sends are asynchronous (an idempotent librdkafka producer via confluent-kafka: acks=all, retries
without duplicates); every send's outcome comes back as a delivery report, and `flush()` raises
`EventLogError` naming each event that was not delivered, so the caller can retry or alert.
`log_decision_sync` confirms a single event before returning.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import BaseModel, ValidationError

from contracts import DEFAULT_TOPICS, DecisionEvent, RewardEvent, StreamrlError, Topics
from contracts.kafka import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=BaseModel)

# How often a thread waiting on the producer (a full local queue, a sync send) serves delivery reports.
_POLL_S = 0.05


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
    """Log `DecisionEvent`s (keyed by mdp_id) and `RewardEvent`s (keyed by request_id) to Kafka.

    The constructor does not contact the broker: an app can start while it is down, and problems
    surface per event. `metadata_timeout_s` bounds how long a send may wait for room when the
    producer's local queue is full (librdkafka never blocks a send on metadata).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics = DEFAULT_TOPICS,
        *,
        max_retries: int = 10,
        delivery_timeout_s: float = 30.0,
        metadata_timeout_s: float = 5.0,
        linger_ms: int = 5,
        security: KafkaSecurity = PLAINTEXT,
        idempotent: bool = True,
    ) -> None:
        request_timeout_ms = min(10_000, int(delivery_timeout_s * 1000) - linger_ms)
        if request_timeout_ms <= 0:
            raise ValueError(f"delivery_timeout_s must exceed linger_ms, got {delivery_timeout_s} s")
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self._max_block_s = metadata_timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                # Idempotent: no copies, but a broker that acknowledges a sequence before it stores
                # the batch (the local broker's s3 engine, when SIGKILLed) loses that batch on retry.
                # At least once: one request in flight, resent until stored; copies of a decision
                # collapse in the timeline job (first seen per mdp_id and sequence number).
                "enable.idempotence": idempotent,
                "acks": "all",
                "retries": max_retries if idempotent else 2_147_483_647,
                "max.in.flight.requests.per.connection": 5 if idempotent else 1,
                "linger.ms": linger_ms,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "request.timeout.ms": request_timeout_ms,
                # Java's (and kafka-python's) key hash, so a key lands on the same partition whichever
                # client logged it: apps log with kafka-python, serving with this logger.
                "partitioner": "murmur2_random",
                "error_cb": _log_client_error,
                "logger": log,
            }
            | security.client_settings("confluent")
        )
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._in_flight: dict[int, _InFlight] = {}
        self._failed: list[UndeliveredEvent] = []
        self._closed = False

    # ------------------------------------------------------------------ logging

    def log_decision(self, event: DecisionEvent) -> None:
        """Queue a decision for delivery; failures are reported by the next `flush()`."""
        event, value = _validated(event, DecisionEvent, "log_decision")
        self._send_tracked(EventKind.DECISION, self.topics.decisions, event.mdp_id, value, event)

    def log_reward(self, event: RewardEvent) -> None:
        """Queue a reward for delivery; failures are reported by the next `flush()`."""
        event, value = _validated(event, RewardEvent, "log_reward")
        self._send_tracked(EventKind.REWARD, self.topics.rewards, event.request_id, value, event)

    def log_decision_sync(self, event: DecisionEvent, timeout_s: float = 10.0) -> Delivery:
        """Send one decision and wait for the broker's acknowledgement; raises `EventLogError` if none."""
        event, value = _validated(event, DecisionEvent, "log_decision_sync")
        return self._send_sync(
            EventKind.DECISION, self.topics.decisions, event.mdp_id, value, event, timeout_s
        )

    def log_reward_sync(self, event: RewardEvent, timeout_s: float = 10.0) -> Delivery:
        """Send one reward and wait for the broker's acknowledgement; raises `EventLogError` if none."""
        event, value = _validated(event, RewardEvent, "log_reward_sync")
        return self._send_sync(
            EventKind.REWARD, self.topics.rewards, event.request_id, value, event, timeout_s
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
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            undelivered, self._failed = self._failed, []
            if remaining or self._in_flight:
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
            # What the flush left was just reported as undelivered; drop it rather than let
            # `close()` wait out the delivery timeout.
            if len(self._producer):
                self._producer.purge()
                self._producer.flush(1.0)
            self._producer.close()

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
            self._produce(topic, key, value, functools.partial(self._on_delivery, token))
        except (KafkaException, BufferError) as exc:  # e.g. a fatal producer error, a queue full too long
            self._on_failure(token, _cause(exc))
        except Exception:
            with self._lock:
                del self._in_flight[token]
            raise
        self._producer.poll(0)  # serve delivery reports already in, so they never pile up

    def _produce(self, topic: str, key: bytes | str | None, value: bytes, on_delivery: Any) -> None:
        """Queue one message; while librdkafka's local queue is full, serve reports and retry for up to
        `metadata_timeout_s`, then raise `BufferError`."""
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                return
            except BufferError as exc:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self._max_block_s
                if now >= deadline:
                    raise BufferError(
                        f"producer queue still full after {self._max_block_s} s (broker slow or down?)"
                    ) from exc
                self._producer.poll(_POLL_S)

    def _on_delivery(self, token: int, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            with self._lock:
                self._in_flight.pop(token, None)
        else:
            self._on_failure(token, _cause(error))

    def _on_failure(self, token: int, cause: str) -> None:
        with self._lock:
            record = self._in_flight.pop(token, None)
            if record is not None:
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
        done = threading.Event()
        outcome: list[tuple[KafkaError | None, Message]] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            outcome.append((error, message))
            done.set()

        deadline = time.monotonic() + timeout_s
        cause = None
        try:
            self._produce(topic, key, value, delivered)
        except (KafkaException, BufferError) as exc:
            cause = _cause(exc)
        else:
            # Delivery reports are served by whichever thread polls; another thread's flush may serve this one.
            while not done.is_set() and (left := deadline - time.monotonic()) > 0:
                self._producer.poll(min(left, _POLL_S))
            if not done.is_set():
                cause = f"not acknowledged within {timeout_s} s (may still be delivered)"
            elif outcome[0][0] is not None:
                cause = _cause(outcome[0][0])
        if cause is not None:
            undelivered = [UndeliveredEvent(kind, topic, event.request_id, cause, event)]
            raise EventLogError(_describe(undelivered, self.bootstrap_servers), undelivered)
        message = outcome[0][1]
        return Delivery(message.topic(), message.partition(), message.offset())


def _validated(event: object, expected: type[_E], method: str) -> tuple[_E, bytes]:
    """The event and the JSON to send, validated, so objects built with `model_construct` or of the
    wrong type never reach Kafka. The bytes on the wire are what is validated (cheaper than
    re-validating the object, and what a reader will parse)."""
    if not isinstance(event, expected):
        raise InvalidEventError(
            f"{method} expects a {expected.__name__}, got {type(event).__name__}; "
            f"build one with {expected.__name__}(...) (it validates the fields)"
        )
    try:
        value = event.model_dump_json().encode("utf-8")
        return expected.model_validate_json(value), value
    except (ValidationError, ValueError, TypeError) as exc:  # model_construct junk may not even serialize
        raise InvalidEventError(f"{method}: invalid {expected.__name__}, nothing was sent: {exc}") from exc


def _cause(error: KafkaError | BaseException) -> str:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return f"{type(error).__name__}: {error}"


def _log_client_error(error: KafkaError) -> None:
    """librdkafka's client-level errors (broker down, …); per-event failures come as delivery reports."""
    if error.fatal():
        log.error("Kafka producer fatal error, every later send will fail: %s", _cause(error))
    else:
        log.debug("Kafka producer: %s", _cause(error))


def _describe(undelivered: list[UndeliveredEvent], bootstrap_servers: str) -> str:
    by_cause: dict[str, list[str]] = defaultdict(list)
    for item in undelivered:
        by_cause[item.cause].append(f"{item.kind.value}:{item.request_id or '-'}@{item.topic}")
    lines = [f"{len(undelivered)} event(s) not delivered to the Kafka broker at {bootstrap_servers}:"]
    lines += [f"  {cause}: {', '.join(events)}" for cause, events in by_cause.items()]
    lines.append("resend them from EventLogError.undelivered; is the broker up? (`streamrl stack status`)")
    return "\n".join(lines)
