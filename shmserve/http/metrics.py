"""Prometheus metrics of one API worker process, in a registry of its own.

The hot path only bumps plain Python counters (a list index and two adds per
request); prometheus-client turns them into its text format when ``/metrics``
is scraped. Each API worker process keeps its own numbers, and a scrape is
answered by whichever worker accepted the connection: label-free sums across
workers need a scrape per worker (or ``--api-workers 1``).

Metrics:

- ``shmserve_http_requests_total{api,status}``: responses sent per API (``api="-"``
  for unknown routes and malformed requests) and HTTP status.
- ``shmserve_http_request_duration_seconds{api,status}``: histogram, from the
  request being dispatched to its response being written.
- ``shmserve_http_in_flight_requests``: API calls being served right now.
- ``shmserve_runner_batch_size{runner,method}``: histogram of the size of the
  batch that served each call this process made.
- ``shmserve_runner_queue_wait_seconds{runner,method}``: from the client writing
  the request to the model starting on its batch (queueing plus batching delay).
- ``shmserve_runner_compute_seconds{runner,method}``: model time of that batch.
- ``shmserve_runner_call_seconds{runner,method}``: client-side round trip.

The runner histograms are fed by ``shmserve.client.add_trace_hook``.
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = ["Histogram", "Metrics", "LATENCY_BUCKETS", "BATCH_BUCKETS"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """A lock-free (single-writer) histogram: ``counts[i]`` holds values ``<= bounds[i]``."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((_fmt(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


class Metrics:
    """Request and runner metrics of this process; `render()` gives the Prometheus text."""

    def __init__(self, service: str, in_flight: Callable[[], int] = lambda: 0) -> None:
        self.service = service
        self._in_flight = in_flight
        self._requests: dict[tuple[str, int], Histogram] = {}
        self._runner: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        self._runner_lock = threading.Lock()  # the trace hook may run on a transport thread
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    def request_histogram(self, api: str, status: int) -> Histogram:
        """The latency histogram of (api, status); callers may keep it to skip the lookup."""
        key = (api, status)
        h = self._requests.get(key)
        if h is None:
            h = self._requests[key] = Histogram(LATENCY_BUCKETS)
        return h

    def observe_request(self, api: str, status: int, seconds: float) -> None:
        """Count one response of `api` with `status` that took `seconds`."""
        key = (api, status)
        h = self._requests.get(key)
        if h is None:
            h = self._requests[key] = Histogram(LATENCY_BUCKETS)
        h.observe(seconds)

    def on_trace(self, runner: str, method: str, trace: dict[str, Any]) -> None:
        """Trace hook for ``shmserve.client.add_trace_hook``: one completed runner call."""
        key = (runner, method)
        with self._runner_lock:
            hs = self._runner.get(key)
            if hs is None:
                hs = self._runner[key] = (
                    Histogram(BATCH_BUCKETS),
                    Histogram(LATENCY_BUCKETS),
                    Histogram(LATENCY_BUCKETS),
                    Histogram(LATENCY_BUCKETS),
                )
            batch, wait, compute, call = hs
            size = trace.get("batch_size")
            if size is not None:
                batch.observe(size)
            submit = trace.get("submit")
            start = trace.get("model_start")
            end = trace.get("model_end")
            complete = trace.get("complete")
            if submit is not None and start is not None:
                wait.observe(max(0.0, start - submit))
            if start is not None and end is not None:
                compute.observe(max(0.0, end - start))
            if submit is not None and complete is not None:
                call.observe(max(0.0, complete - submit))

    # -- prometheus-client collector protocol -----------------------------------
    def collect(self) -> Iterator[Any]:
        """Yield metric families (called by the registry at scrape time)."""
        total = CounterMetricFamily("shmserve_http_requests", "HTTP responses sent, per API and status.",
                                    labels=["api", "status"])
        dur = HistogramMetricFamily("shmserve_http_request_duration_seconds",
                                    "Time from dispatch to response, per API and status.", labels=["api", "status"])
        for (api, status), h in sorted(self._requests.items()):
            labels = [api, str(status)]
            total.add_metric(labels, h.count)
            dur.add_metric(labels, h.buckets(), h.sum)
        yield total
        yield dur
        yield GaugeMetricFamily("shmserve_http_in_flight_requests", "API calls being served now.", value=self._in_flight())
        families = (
            HistogramMetricFamily("shmserve_runner_batch_size", "Size of the batch that served each runner call.",
                                  labels=["runner", "method"]),
            HistogramMetricFamily("shmserve_runner_queue_wait_seconds",
                                  "From request written to model start (queueing and batching delay).",
                                  labels=["runner", "method"]),
            HistogramMetricFamily("shmserve_runner_compute_seconds", "Model time of the batch that served each call.",
                                  labels=["runner", "method"]),
            HistogramMetricFamily("shmserve_runner_call_seconds", "Runner call round trip seen by this process.",
                                  labels=["runner", "method"]),
        )
        with self._runner_lock:
            for (runner, method), hs in sorted(self._runner.items()):
                for fam, h in zip(families, hs, strict=True):
                    fam.add_metric([runner, method], h.buckets(), h.sum)
        yield from families

    def render(self) -> bytes:
        """The Prometheus text exposition of this process's metrics."""
        return generate_latest(self.registry)
