"""Serving metrics in the Prometheus text format (0.0.4), kept per app instance.

Written by hand rather than with prometheus_client: it is not a declared dependency, and its
process-global default registry would make two apps in one process (tests) share counters.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + "n").replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + ",".join(escaped) + "}"


class ServingMetrics:
    """Counters, a latency histogram and the model-version gauge; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._latency_counts: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)
        self._latency_n: dict[str, int] = defaultdict(int)
        self.decisions_logged = 0
        self.decisions_failed = 0
        self.model_swaps = 0
        self.model_swap_failures = 0
        self.feature_lookup_failures = 0
        self.model_version: str | None = None

    def observe_request(self, endpoint: str, status: int, latency_s: float) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1
            counts = self._latency_counts.setdefault(endpoint, [0] * len(LATENCY_BUCKETS_S))
            index = bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)
            if index < len(counts):
                counts[index] += 1
            self._latency_sum[endpoint] += latency_s
            self._latency_n[endpoint] += 1

    def add(self, name: str, n: int = 1) -> None:
        """Increment one of the plain counters (`decisions_logged`, `model_swaps`, ...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def requests_total(self, endpoint: str, status: int) -> int:
        with self._lock:
            return self._requests.get((endpoint, str(status)), 0)

    def render(self) -> str:
        """The whole exposition, one snapshot under the lock."""
        with self._lock:
            out: list[str] = []

            def family(name: str, kind: str, help_text: str) -> None:
                out.append(f"# HELP {name} {help_text}")
                out.append(f"# TYPE {name} {kind}")

            family("streamrl_serving_requests_total", "counter", "HTTP requests by endpoint and status code.")
            for (endpoint, status), n in sorted(self._requests.items()):
                out.append(
                    f"streamrl_serving_requests_total{_labels((('endpoint', endpoint), ('status', status)))} {n}"
                )
            family("streamrl_serving_request_latency_seconds", "histogram", "Request latency in the server.")
            for endpoint, counts in sorted(self._latency_counts.items()):
                cumulative = 0
                for bound, n in zip(LATENCY_BUCKETS_S, counts, strict=True):
                    cumulative += n
                    labels = _labels((("endpoint", endpoint), ("le", repr(bound))))
                    out.append(f"streamrl_serving_request_latency_seconds_bucket{labels} {cumulative}")
                total = self._latency_n[endpoint]
                labels = _labels((("endpoint", endpoint), ("le", "+Inf")))
                out.append(f"streamrl_serving_request_latency_seconds_bucket{labels} {total}")
                ep = _labels((("endpoint", endpoint),))
                out.append(
                    f"streamrl_serving_request_latency_seconds_sum{ep} {self._latency_sum[endpoint]!r}"
                )
                out.append(f"streamrl_serving_request_latency_seconds_count{ep} {total}")
            for name, value, help_text in (
                (
                    "streamrl_serving_decisions_logged_total",
                    self.decisions_logged,
                    "Decisions the broker acknowledged.",
                ),
                (
                    "streamrl_serving_decisions_failed_total",
                    self.decisions_failed,
                    "Decisions that could not be logged.",
                ),
                ("streamrl_serving_model_swaps_total", self.model_swaps, "Models loaded and swapped in."),
                (
                    "streamrl_serving_model_swap_failures_total",
                    self.model_swap_failures,
                    "Deployed models that failed to load.",
                ),
                (
                    "streamrl_serving_feature_lookup_failures_total",
                    self.feature_lookup_failures,
                    "Online feature lookups that failed (served on request features).",
                ),
            ):
                family(name, "counter", help_text)
                out.append(f"{name} {value}")
            family("streamrl_serving_model_version", "gauge", "1 for the model version currently served.")
            if self.model_version is not None:
                out.append(f"streamrl_serving_model_version{_labels((('version', self.model_version),))} 1")
            return "\n".join(out) + "\n"
