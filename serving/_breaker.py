"""A circuit breaker for the online feature store: serving's decisions never wait on a store that is down.

Closed, every call reads the store. A failed read opens it: for `open_s` seconds calls skip the
store and decide on the request's own features (the model treats the others as missing),
each counted in `streamrl_serving_feature_fallbacks_total`, and `/healthz` is degraded with the
reason. Then one call tries the store again (half-open): success closes the breaker, failure
opens it for another `open_s`. So with the store down a decision costs one failed read per
`open_s`, not a timeout each, and recovery needs nobody.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class FeatureBreaker:
    """Thread-safe closed → open → half-open breaker around online feature reads."""

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._opened_at: float | None = None  # None: closed
        self._probing = False
        self._reason: str | None = None

    def allow(self) -> bool:
        """Whether this call may read the store: closed, or the one probe once `open_s` has passed."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.open_s:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._opened_at, self._probing, self._reason = None, False, None

    def failed(self, reason: str) -> None:
        with self._lock:
            self._opened_at, self._probing, self._reason = self._clock(), False, reason

    def degraded_reason(self) -> str | None:
        """Why decisions go without online features now (for `/healthz`), None when closed."""
        with self._lock:
            if self._opened_at is None:
                return None
            return (
                f"online feature store unavailable ({self._reason}); deciding on request features only, "
                f"retrying every {self.open_s:g} s"
            )
