"""Hands served decisions to `stream.EventLogger` off the request path.

Requests only offer their decisions to a bounded queue, all of a call's or none, without ever
waiting: a full queue refuses them with `DecisionQueueFullError` (503 with `Retry-After`), so
the caller learns that its decisions were neither answered nor logged, and nothing is dropped
silently. One thread takes everything queued at once, sends it and flushes. A send error or an
undelivered flush is counted in `/metrics` (`decisions_failed_total`), logged with the request
ids, and makes `/healthz` degraded; so does a backlog over half the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from contracts import DecisionEvent
from serving._metrics import ServingMetrics
from serving.errors import DecisionQueueFullError
from stream import EventLogError, EventLogger

logger = logging.getLogger(__name__)

_DEGRADED_FOR_S = 60.0


class DecisionLog:
    """A bounded queue in front of an `EventLogger`, drained by one background thread."""

    def __init__(
        self,
        event_logger: EventLogger,
        metrics: ServingMetrics,
        queue_size: int,
        flush_interval_s: float,
        flush_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        self._event_logger = event_logger
        self._metrics = metrics
        self._queue: deque[DecisionEvent] = deque()
        self._queue_size = queue_size
        self._changed = threading.Condition()
        self._stopping = False
        self._flush_interval_s = flush_interval_s
        self._flush_timeout_s = flush_timeout_s
        self._retry_after_s = retry_after_s
        self._thread: threading.Thread | None = None
        self._last_failure: tuple[float, str] | None = None
        metrics.watch_decision_queue(self.depth, queue_size)

    @property
    def capacity(self) -> int:
        return self._queue_size

    def depth(self) -> int:
        """Decisions queued and not yet handed to the broker client."""
        return len(self._queue)

    def refuse_if_full(self, n: int) -> None:
        """Raise `DecisionQueueFullError` now if `n` more decisions would not fit (a cheap early no;
        `offer` decides)."""
        depth = len(self._queue)
        if depth + n > self._queue_size:
            self._metrics.add("decisions_refused", n)
            raise DecisionQueueFullError(n, depth, self._queue_size, self._retry_after_s)

    def offer(self, events: Sequence[DecisionEvent]) -> None:
        """Queue all of `events` or none, at once; never waits.

        Raises `DecisionQueueFullError` when they do not all fit: the caller must not answer
        those decisions (they are not logged) and says 503 with `Retry-After`.
        """
        with self._changed:
            depth = len(self._queue)
            if depth + len(events) > self._queue_size:
                self._metrics.add("decisions_refused", len(events))
                raise DecisionQueueFullError(len(events), depth, self._queue_size, self._retry_after_s)
            self._queue.extend(events)
            self._changed.notify()

    def degraded_reason(self) -> str | None:
        """A recent logging failure, or a backlog, worth showing on `/healthz`."""
        if self._last_failure is not None:
            at, reason = self._last_failure
            if time.monotonic() - at < _DEGRADED_FOR_S:
                return f"decision logging failed {time.monotonic() - at:.0f}s ago: {reason}"
        depth = len(self._queue)
        if depth > self._queue_size // 2:
            return f"decision log backlog {depth}/{self._queue_size}"
        return None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="streamrl-decision-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send and flush everything queued, then stop the thread."""
        if self._thread is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(timeout=self._flush_timeout_s + 5.0)
        self._thread = None

    def _fail(self, request_ids: list[str], reason: str) -> None:
        self._metrics.add("decisions_failed", len(request_ids))
        self._last_failure = (time.monotonic(), reason)
        shown = request_ids[:20]
        more = f" (+{len(request_ids) - len(shown)} more)" if len(request_ids) > len(shown) else ""
        logger.error("%d decision(s) not logged: %s; request ids %s%s", len(request_ids), reason, shown, more)

    def _take(self) -> tuple[list[DecisionEvent], bool]:
        """Everything queued (waiting up to a flush interval for something), and whether to stop."""
        with self._changed:
            if not self._queue and not self._stopping:
                self._changed.wait(self._flush_interval_s)
            taken = list(self._queue)
            self._queue.clear()
            return taken, self._stopping

    def _run(self) -> None:
        stopping = False
        while not stopping:
            taken, stopping = self._take()
            sent: list[str] = []
            for event in taken:
                try:
                    self._event_logger.log_decision(event)
                    sent.append(event.request_id)
                except Exception as exc:
                    self._fail([event.request_id], f"{type(exc).__name__}: {exc}")
            if sent:
                self._flush(sent)

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
