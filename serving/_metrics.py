"""Serving metrics, exposed with prometheus_client from a registry of each app's own.

`ServingMetrics` is a prometheus_client collector: it keeps its counts under one lock and
builds the metric families on each scrape; `generate_latest(metrics.registry)` writes the text.
It does not use prometheus_client's `Counter`/`Histogram` objects, whose storage is chosen once
per process: importing Feast sets `PROMETHEUS_MULTIPROC_DIR`, and in that mode every metric is
backed by one mmap file per process, so a second app in the process (tests, the demo) would
start from the first one's counts.

With several workers (`ServingConfig.workers`) each process has its own counts: a scrape shows the
worker that accepted it, named by `streamrl_serving_worker{pid=…}`.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# The plain counters `add` increments: name -> (metric name, help).
_COUNTERS = {
    "decisions_logged": ("streamrl_serving_decisions_logged_total", "Decisions the broker acknowledged."),
    "decisions_failed": ("streamrl_serving_decisions_failed_total", "Decisions that could not be logged."),
    "decisions_refused": (
        "streamrl_serving_decisions_refused_total",
        "Decisions refused with 503 because the decision log queue was full (neither answered nor logged).",
    ),
    "model_swaps": ("streamrl_serving_model_swaps_total", "Models loaded and swapped in."),
    "model_swap_failures": (
        "streamrl_serving_model_swap_failures_total",
        "Deployed or canary models that failed to load.",
    ),
    "canary_decisions": ("streamrl_serving_canary_decisions_total", "Decisions taken by the canary model."),
    "not_served": (
        "streamrl_serving_not_served_total",
        "Requests answered not_served: a canary runs beside no model and did not take their episode.",
    ),
    "wrong_kind_requests": (
        "streamrl_serving_wrong_kind_requests_total",
        "Requests of another action kind than the served one (answered 422).",
    ),
    "feature_lookup_failures": (
        "streamrl_serving_feature_lookup_failures_total",
        "Online feature lookups that failed (served on request features).",
    ),
}


class ServingMetrics:
    """Counters, a latency histogram and the model-version gauge; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        # Per endpoint: observations per bucket (the last one is +Inf), and their sum.
        self._latency_counts: dict[str, list[int]] = {}
        self._latency_sum_s: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._model_version: str | None = None
        self._queue_depth: Callable[[], int] | None = None
        self._queue_capacity = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def observe_request(self, endpoint: str, status: int, latency_s: float) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1
            counts = self._latency_counts.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS_S) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
            self._latency_sum_s[endpoint] += latency_s

    def add(self, name: str, n: int = 1) -> None:
        """Increment one of the plain counters (`decisions_logged`, `model_swaps`, ...)."""
        if name not in _COUNTERS:
            raise KeyError(f"no serving counter {name!r}; the counters are {sorted(_COUNTERS)}")
        with self._lock:
            self._counts[name] += n

    def watch_decision_queue(self, depth: Callable[[], int], capacity: int) -> None:
        """Export the decision log's queue depth (read on each scrape) and its capacity as gauges."""
        self._queue_depth, self._queue_capacity = depth, capacity

    def requests_total(self, endpoint: str, status: int) -> int:
        with self._lock:
            return self._requests[(endpoint, str(status))]

    @property
    def model_version(self) -> str | None:
        return self._model_version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        """Only the served version is exported: a swap drops the previous version's series."""
        with self._lock:
            self._model_version = version

    def render(self) -> bytes:
        """The whole exposition in Prometheus text format (serve it as `CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The metric families as they stand now, one snapshot under the lock (the collector API)."""
        with self._lock:
            requests = sorted(self._requests.items())
            latency = sorted((e, list(c), self._latency_sum_s[e]) for e, c in self._latency_counts.items())
            counts = dict(self._counts)
            version = self._model_version
        family = CounterMetricFamily(
            "streamrl_serving_requests_total",
            "HTTP requests by endpoint and status code.",
            labels=("endpoint", "status"),
        )
        for labels, n in requests:
            family.add_metric(labels, n)
        yield family
        histogram = HistogramMetricFamily(
            "streamrl_serving_request_latency_seconds", "Request latency in the server.", labels=("endpoint",)
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
        for endpoint, per_bucket, sum_s in latency:
            buckets = list(zip(bounds, itertools.accumulate(per_bucket), strict=True))
            histogram.add_metric([endpoint], buckets, sum_value=sum_s)
        yield histogram
        for name, (metric, help_text) in _COUNTERS.items():
            yield CounterMetricFamily(metric, help_text, value=counts.get(name, 0))
        if self._queue_depth is not None:
            yield GaugeMetricFamily(
                "streamrl_serving_decision_queue_depth",
                "Decisions waiting to be handed to the broker client.",
                value=self._queue_depth(),
            )
            yield GaugeMetricFamily(
                "streamrl_serving_decision_queue_capacity",
                "Decisions the queue holds before requests are refused with 503.",
                value=self._queue_capacity,
            )
        worker = GaugeMetricFamily(
            "streamrl_serving_worker",
            "1, labelled with the pid of the serving process (worker) that answered this scrape.",
            labels=("pid",),
        )
        worker.add_metric([str(os.getpid())], 1)
        yield worker
        gauge = GaugeMetricFamily(
            "streamrl_serving_model_version", "1 for the model version currently served.", labels=("version",)
        )
        if version is not None:
            gauge.add_metric([version], 1)
        yield gauge
