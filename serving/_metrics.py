"""Serving metrics, exposed with prometheus_client from a registry of each app's own.

`ServingMetrics` is a prometheus_client collector: it keeps its counts under one lock and
builds the metric families on each scrape; `generate_latest(metrics.registry)` writes the text.
It does not use prometheus_client's `Counter`/`Histogram` objects, whose storage is chosen once
per process: importing Feast sets `PROMETHEUS_MULTIPROC_DIR`, and in that mode every metric is
backed by one mmap file per process, so a second app in the process (tests, the demo) would
start from the first one's counts.

With several workers (`ServingConfig.workers`) each process counts its own, and every
`publish_interval_s` (and when it stops) writes them to a file of its own in a directory the
workers share (`serving.run_server` makes it). A scrape, whichever worker accepts it, adds its own
live counts to the other workers' latest files: counters and the latency histogram are sums over
every worker that has run (a stopped worker's counts stay, so the sums never go back), the queue
gauges sum the live workers, `streamrl_serving_model_version{version}` counts the live workers
serving each version, and `streamrl_serving_worker_model_version{pid, version}` names them.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    "feature_fallbacks": (
        "streamrl_serving_feature_fallbacks_total",
        "Decisions taken on request features only: the online store failed, or its breaker was open.",
    ),
}


class ServingMetrics:
    """Counters, a latency histogram and the model-version gauge; safe to update from any thread.

    `shared_dir`: where the workers of one server publish their counts (see the module doc); None
    for a single process."""

    def __init__(self, shared_dir: Path | str | None = None, publish_interval_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        # Per endpoint: observations per bucket (the last one is +Inf), and their sum.
        self._latency_counts: dict[str, list[int]] = {}
        self._latency_sum_s: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._model_version: str | None = None
        self._queue_depth: Callable[[], int] | None = None
        self._queue_capacity = 0
        self._shared_dir = None if shared_dir is None else Path(shared_dir)
        self._own_file = None if self._shared_dir is None else self._shared_dir / f"{uuid.uuid4().hex}.json"
        self._publish_interval_s = publish_interval_s
        self._stop_publishing = threading.Event()
        self._publisher: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    # --- sharing between workers -------------------------------------------------------------
    def start_publishing(self) -> None:
        """Write this worker's counts to the shared directory now and every `publish_interval_s`."""
        if self._shared_dir is None or self._publisher is not None:
            return
        self._stop_publishing.clear()
        self.publish()
        self._publisher = threading.Thread(target=self._publish_loop, name="metrics-publisher", daemon=True)
        self._publisher.start()

    def stop_publishing(self) -> None:
        """Stop the publisher after writing the final counts (they stay in the sums)."""
        if self._publisher is None:
            return
        self._stop_publishing.set()
        self._publisher.join()
        self._publisher = None
        self.publish()

    def publish(self) -> None:
        """Write this worker's counts to its file in the shared directory (atomically)."""
        if self._own_file is None:
            return
        tmp = self._own_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state()), encoding="utf-8")
        tmp.replace(self._own_file)

    def _publish_loop(self) -> None:
        while not self._stop_publishing.wait(self._publish_interval_s):
            try:
                self.publish()
            except OSError:  # a full or vanished directory: the next round tries again
                continue

    def _state(self) -> dict[str, Any]:
        """This worker's counts as JSON-able values, taken under the lock."""
        depth = self._queue_depth() if self._queue_depth is not None else None
        with self._lock:
            return {
                "pid": os.getpid(),
                "requests": [[e, s, n] for (e, s), n in self._requests.items()],
                "latency": {e: [list(c), self._latency_sum_s[e]] for e, c in self._latency_counts.items()},
                "counts": dict(self._counts),
                "queue_depth": depth,
                "queue_capacity": self._queue_capacity if depth is not None else None,
                "model_version": self._model_version,
            }

    def _peer_states(self) -> list[dict[str, Any]]:
        """The other workers' last published counts, each with `alive` (its process still runs)."""
        if self._shared_dir is None:
            return []
        states = []
        for path in self._shared_dir.glob("*.json"):
            if path == self._own_file:
                continue
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # replaced or removed between listing and reading
                continue
            state["alive"] = _alive(int(state["pid"]))
            states.append(state)
        return states

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
        """The metric families as they stand now: this worker's counts (one snapshot under the lock)
        plus the other workers' published ones (the collector API)."""
        states = [{**self._state(), "alive": True}, *self._peer_states()]
        requests: Counter[tuple[str, str]] = Counter()
        latency: dict[str, tuple[list[int], float]] = {}
        counts: Counter[str] = Counter()
        for state in states:
            requests.update({(e, s): n for e, s, n in state["requests"]})
            for endpoint, (per_bucket, sum_s) in state["latency"].items():
                total, total_s = latency.get(endpoint, ([0] * len(per_bucket), 0.0))
                latency[endpoint] = ([a + b for a, b in zip(total, per_bucket, strict=True)], total_s + sum_s)
            counts.update(state["counts"])
        live = [state for state in states if state["alive"]]
        family = CounterMetricFamily(
            "streamrl_serving_requests_total",
            "HTTP requests by endpoint and status code.",
            labels=("endpoint", "status"),
        )
        for labels, n in sorted(requests.items()):
            family.add_metric(labels, n)
        yield family
        histogram = HistogramMetricFamily(
            "streamrl_serving_request_latency_seconds", "Request latency in the server.", labels=("endpoint",)
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
        for endpoint, (per_bucket, sum_s) in sorted(latency.items()):
            buckets = list(zip(bounds, itertools.accumulate(per_bucket), strict=True))
            histogram.add_metric([endpoint], buckets, sum_value=sum_s)
        yield histogram
        for name, (metric, help_text) in _COUNTERS.items():
            yield CounterMetricFamily(metric, help_text, value=counts.get(name, 0))
        queues = [state for state in live if state["queue_depth"] is not None]
        if queues:
            yield GaugeMetricFamily(
                "streamrl_serving_decision_queue_depth",
                "Decisions waiting to be handed to the broker client (all live workers).",
                value=sum(state["queue_depth"] for state in queues),
            )
            yield GaugeMetricFamily(
                "streamrl_serving_decision_queue_capacity",
                "Decisions the queues hold before requests are refused with 503 (all live workers).",
                value=sum(state["queue_capacity"] for state in queues),
            )
        worker = GaugeMetricFamily(
            "streamrl_serving_worker",
            "1 per live serving process (worker), labelled with its pid.",
            labels=("pid",),
        )
        per_worker = GaugeMetricFamily(
            "streamrl_serving_worker_model_version",
            "1 for the model version each live worker serves.",
            labels=("pid", "version"),
        )
        versions: Counter[str] = Counter(state["model_version"] for state in live if state["model_version"])
        for pid in sorted({state["pid"] for state in live}):  # a set: apps in one process share a pid
            worker.add_metric([str(pid)], 1)
        for pid, version in sorted({(s["pid"], s["model_version"]) for s in live if s["model_version"]}):
            per_worker.add_metric([str(pid), version], 1)
        yield worker
        yield per_worker
        gauge = GaugeMetricFamily(
            "streamrl_serving_model_version",
            "How many live workers serve each model version (1 with a single process).",
            labels=("version",),
        )
        for version, n in sorted(versions.items()):
            gauge.add_metric([version], n)
        yield gauge


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs (on this host: the workers share one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True
