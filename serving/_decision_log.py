"""Hands served decisions to `stream.EventLogger` off the request path.

Requests only enqueue; one thread sends and flushes. Nothing is dropped silently: a full
queue, a send error or an undelivered flush is counted in `/metrics`
(`decisions_failed_total`), logged with the request ids, and makes `/healthz` degraded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from contracts import DecisionEvent
from serving._metrics import ServingMetrics
from stream import EventLogError, EventLogger

logger = logging.getLogger(__name__)

_MAX_UNFLUSHED = 512
_DEGRADED_FOR_S = 60.0
_STOP = object()


class DecisionLog:
    """A bounded queue in front of an `EventLogger`, drained by one background thread."""

    def __init__(
        self,
        event_logger: EventLogger,
        metrics: ServingMetrics,
        queue_size: int,
        flush_interval_s: float,
        flush_timeout_s: float,
        enqueue_timeout_s: float = 10.0,
    ) -> None:
        self._event_logger = event_logger
        self._metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._flush_interval_s = flush_interval_s
        self._flush_timeout_s = flush_timeout_s
        self._enqueue_timeout_s = enqueue_timeout_s
        self._thread: threading.Thread | None = None
        self._last_failure: tuple[float, str] | None = None

    def submit(self, event: DecisionEvent) -> None:
        """Enqueue; a full queue slows the caller down (back-pressure) rather than losing the event.

        Only when the queue stays full for `enqueue_timeout_s` is the decision counted as failed.
        """
        try:
            self._queue.put(event, timeout=self._enqueue_timeout_s)
        except queue.Full:
            self._fail(
                [event.request_id],
                f"decision queue full ({self._queue.maxsize}) for {self._enqueue_timeout_s}s; broker too slow?",
            )

    def degraded_reason(self) -> str | None:
        """A recent logging failure, or a backlog, worth showing on `/healthz`."""
        if self._last_failure is not None:
            at, reason = self._last_failure
            if time.monotonic() - at < _DEGRADED_FOR_S:
                return f"decision logging failed {time.monotonic() - at:.0f}s ago: {reason}"
        if self._queue.qsize() > self._queue.maxsize // 2:
            return f"decision log backlog {self._queue.qsize()}/{self._queue.maxsize}"
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streamrl-decision-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send and flush everything queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=self._flush_timeout_s + 5.0)
        self._thread = None

    def _fail(self, request_ids: list[str], reason: str) -> None:
        self._metrics.add("decisions_failed", len(request_ids))
        self._last_failure = (time.monotonic(), reason)
        shown = request_ids[:20]
        more = f" (+{len(request_ids) - len(shown)} more)" if len(request_ids) > len(shown) else ""
        logger.error("%d decision(s) not logged: %s; request ids %s%s", len(request_ids), reason, shown, more)

    def _run(self) -> None:
        pending: list[str] = []
        last_flush = time.monotonic()
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif isinstance(item, DecisionEvent):
                try:
                    self._event_logger.log_decision(item)
                    pending.append(item.request_id)
                except Exception as exc:
                    self._fail([item.request_id], f"{type(exc).__name__}: {exc}")
            due = time.monotonic() - last_flush >= self._flush_interval_s or self._queue.empty()
            if pending and (stopping or due or len(pending) >= _MAX_UNFLUSHED):
                self._flush(pending)
                pending = []
                last_flush = time.monotonic()

    def _flush(self, request_ids: list[str]) -> None:
        try:
            self._event_logger.flush(self._flush_timeout_s)
        except Exception as exc:
            failed = _undelivered_ids(exc, request_ids)
            self._metrics.add("decisions_logged", max(0, len(request_ids) - len(failed)))
            self._fail(failed, f"{type(exc).__name__}: {exc}")
            return
        self._metrics.add("decisions_logged", len(request_ids))


def _undelivered_ids(exc: Exception, request_ids: list[str]) -> list[str]:
    """The request ids `EventLogError.undelivered` names; the whole batch for any other failure.

    Events still unacknowledged at the flush timeout are counted as failed even though they may
    arrive later: over-counting a failure is the safe side of "never drop silently".
    """
    if not isinstance(exc, EventLogError) or not exc.undelivered:
        return request_ids
    return [item.request_id or "-" for item in exc.undelivered]
