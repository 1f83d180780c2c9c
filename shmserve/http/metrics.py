"""Prometheus metrics of one API worker process, in a registry of its own.

The hot path only appends each observation to its histogram's pending list
(`Histogram`); reading a histogram sorts them into its buckets. prometheus-client turns them into its text format when ``/metrics``
is scraped.

Several API workers share one port, so a scrape reaches whichever worker
accepted the connection. To still show the whole server, each worker writes a
snapshot of its numbers to a shared folder once a second (`MetricsExchange`),
and a scrape sums the answering worker's live numbers with its peers'
snapshots (at most about a second old). Snapshots of workers that died stay
in the sum, so counters keep rising across API worker restarts.

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

The runner histograms are fed by ``shmserve.traces.add_trace_hook``.
"""
from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from functools import reduce
from operator import add as _add
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..registry import pid_alive

__all__ = ["Histogram", "Metrics", "MetricsExchange", "LATENCY_BUCKETS", "BATCH_BUCKETS", "PENDING_MAX"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# batch size, queue wait, compute, call round trip
_RUNNER_BOUNDS = (BATCH_BUCKETS, LATENCY_BUCKETS, LATENCY_BUCKETS, LATENCY_BUCKETS)


#: pending observations a histogram holds before its writer folds them itself (when nothing reads it)
PENDING_MAX = 4096


class Histogram:
    """A histogram whose writer only appends: ``counts[i]`` holds values ``<= bounds[i]``.

    An observation is appended to `pending` (a hot caller binds ``pending.append``,
    or inlines `observe`: no Python frame per value); reading `counts`, `sum`,
    `count`, `buckets()` or `snapshot()` first folds the pending values into the
    buckets. The writer folds too once `pending` holds `PENDING_MAX` values, so it
    stays bounded when nobody scrapes.

    One writer thread, any reader thread: a fold takes the values it copied off the
    front of `pending` (``del pending[:n]``, one step under the GIL), so a value the
    writer appends meanwhile waits for the next fold; folds, and the reads after
    them, hold the histogram's lock. `pending` is never replaced, so a bound
    ``append`` stays valid.
    """

    __slots__ = ("bounds", "pending", "_counts", "_sum", "_count", "_lock")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.pending: list[float] = []
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Add one observation (what a hot caller inlines: append, then fold past the bound)."""
        pending = self.pending
        pending.append(value)
        if len(pending) >= PENDING_MAX:
            self.fold()

    def fold(self) -> None:
        """Move the pending observations into the buckets."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:  # holding the lock
        pending = self.pending
        if not pending:
            return
        values = pending[:]
        del pending[:len(values)]  # what the writer appended since stays, for the next fold
        counts, bounds = self._counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self._sum = reduce(_add, values, self._sum)  # in order, one add per value: as observing each did
        self._count += len(values)

    @property
    def counts(self) -> list[int]:
        """Observations per bucket (not cumulative), the last one above every bound."""
        with self._lock:
            self._fold()
            return list(self._counts)

    @property
    def sum(self) -> float:
        """Sum of the observations."""
        with self._lock:
            self._fold()
            return self._sum

    @property
    def count(self) -> int:
        """Number of observations."""
        with self._lock:
            self._fold()
            return self._count

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ending with ``+Inf``."""
        counts = self.counts
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, counts, strict=False):
            acc += n
            out.append((_fmt(bound), acc))
        out.append(("+Inf", acc + counts[-1]))
        return out

    def snapshot(self) -> list[Any]:
        """Plain data for `MetricsExchange`: ``[counts, sum]``."""
        with self._lock:
            self._fold()
            return [list(self._counts), self._sum]

    def add(self, snap: list[Any]) -> None:
        """Add a peer's `snapshot()` (same bounds) into this histogram."""
        counts, total = snap
        with self._lock:
            if len(counts) != len(self._counts):
                return  # another version's bucket layout: skip rather than mis-add
            self._fold()
            mine = self._counts
            for i, n in enumerate(counts):
                mine[i] += n
            self._sum += total
            self._count += sum(counts)

    def copy(self) -> "Histogram":
        """An independent copy (pending observations folded in)."""
        h = Histogram(self.bounds)
        with self._lock:
            self._fold()
            h._counts = list(self._counts)
            h._sum = self._sum
            h._count = self._count
        return h


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


class Metrics:
    """Request and runner metrics of this process; `render()` gives the Prometheus text."""

    def __init__(
        self, service: str, in_flight: Callable[[], int] = lambda: 0, exchange: "MetricsExchange | None" = None
    ) -> None:
        self.service = service
        self._in_flight = in_flight
        self.exchange = exchange
        self._requests: dict[tuple[str, int], Histogram] = {}
        self._runner: dict[tuple[str, str], tuple[Histogram, ...]] = {}
        self._runner_lock = threading.Lock()  # the trace hook may run on a transport thread
        self._traces = 0  # traces since the runner histograms were last folded (`on_trace`)
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
        h = self._requests.get((api, status))  # request_histogram and Histogram.observe, inlined: one frame
        if h is None:
            h = self.request_histogram(api, status)
        pending = h.pending
        pending.append(seconds)
        if len(pending) >= PENDING_MAX:
            h.fold()

    def on_trace(self, runner: str, method: str, trace: dict[str, Any]) -> None:
        """Trace hook for ``shmserve.traces.add_trace_hook``: one completed runner call."""
        key = (runner, method)
        with self._runner_lock:
            hs = self._runner.get(key)
            if hs is None:
                hs = tuple(Histogram(b) for b in _RUNNER_BOUNDS)
                self._runner[key] = hs
            batch, wait, compute, call = hs
            # Histogram.observe, inlined (this runs for every runner call's trace): each histogram gets
            # at most one value per trace, so folding all four every PENDING_MAX traces bounds them.
            size = trace.get("batch_size")
            if size is not None:
                batch.pending.append(size)
            submit = trace.get("submit")
            start = trace.get("model_start")
            end = trace.get("model_end")
            complete = trace.get("complete")
            # max(0.0, b - a), without the builtin call
            if submit is not None and start is not None:
                wait.pending.append(start - submit if start > submit else 0.0)
            if start is not None and end is not None:
                compute.pending.append(end - start if end > start else 0.0)
            if submit is not None and complete is not None:
                call.pending.append(complete - submit if complete > submit else 0.0)
            self._traces += 1
            if self._traces >= PENDING_MAX:
                self._traces = 0
                for h in self._runner.values():
                    for one in h:
                        one.fold()

    # -- sharing with the other API workers -------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """This process's numbers as plain data (for `MetricsExchange`)."""
        with self._runner_lock:
            runner = [[r, m, [h.snapshot() for h in hs]] for (r, m), hs in self._runner.items()]
        return {
            "requests": [[api, status, h.snapshot()] for (api, status), h in list(self._requests.items())],
            "runner": runner,
            "in_flight": self._in_flight(),
        }

    def publish(self) -> None:
        """Write this process's snapshot for its peers (called once a second)."""
        if self.exchange is not None:
            self.exchange.publish(self.snapshot())

    def totals(self) -> tuple[dict[tuple[str, int], Histogram], dict[tuple[str, str], list[Histogram]], int]:
        """Request histograms, runner histograms and in-flight count summed over every API worker."""
        return self._merged()

    def _merged(self) -> tuple[dict[tuple[str, int], Histogram], dict[tuple[str, str], list[Histogram]], int]:
        requests = {k: h.copy() for k, h in list(self._requests.items())}
        with self._runner_lock:
            runner = {k: [h.copy() for h in hs] for k, hs in self._runner.items()}
        in_flight = self._in_flight()
        if self.exchange is None:
            return requests, runner, in_flight
        for snap, live in self.exchange.peers():
            for api, status, hsnap in snap.get("requests", ()):
                key = (api, int(status))
                h = requests.get(key)
                if h is None:
                    h = requests[key] = Histogram(LATENCY_BUCKETS)
                h.add(hsnap)
            for name, method, hsnaps in snap.get("runner", ()):
                hs = runner.get((name, method))
                if hs is None:
                    hs = runner[(name, method)] = [Histogram(b) for b in _RUNNER_BOUNDS]
                for h, hsnap in zip(hs, hsnaps, strict=False):
                    h.add(hsnap)
            if live:
                in_flight += int(snap.get("in_flight", 0))
        return requests, runner, in_flight

    # -- prometheus-client collector protocol -----------------------------------
    def collect(self) -> Iterator[Any]:
        """Yield metric families (called by the registry at scrape time)."""
        requests, runner_hists, in_flight = self._merged()
        total = CounterMetricFamily("shmserve_http_requests", "HTTP responses sent, per API and status.",
                                    labels=["api", "status"])
        dur = HistogramMetricFamily("shmserve_http_request_duration_seconds",
                                    "Time from dispatch to response, per API and status.", labels=["api", "status"])
        for (api, status), h in sorted(requests.items()):
            labels = [api, str(status)]
            total.add_metric(labels, h.count)
            dur.add_metric(labels, h.buckets(), h.sum)
        yield total
        yield dur
        yield GaugeMetricFamily("shmserve_http_in_flight_requests", "API calls being served now.", value=in_flight)
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
        for (runner, method), hs in sorted(runner_hists.items()):
            for fam, h in zip(families, hs, strict=True):
                fam.add_metric([runner, method], h.buckets(), h.sum)
        yield from families

    def render(self) -> bytes:
        """The Prometheus text exposition of this process's metrics."""
        return generate_latest(self.registry)


class MetricsExchange:
    """Snapshot files of the API workers of one server, in a folder the supervisor owns.

    Each worker writes ``<dir>/worker-<pid>.json`` (atomically: temp file, then
    rename). `peers()` reads every other worker's file.
    """

    def __init__(self, directory: str | os.PathLike[str], pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self.path = self.directory / f"worker-{self.pid}.json"

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Replace this worker's snapshot file."""
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(snapshot))
            os.replace(tmp, self.path)
        except OSError:
            pass  # the folder went away (shutdown): nothing to share any more

    def peers(self) -> list[tuple[dict[str, Any], bool]]:
        """``(snapshot, alive)`` of every other worker that published one."""
        out: list[tuple[dict[str, Any], bool]] = []
        try:
            paths = list(self.directory.glob("worker-*.json"))
        except OSError:
            return out
        for path in paths:
            if path == self.path:
                continue
            try:
                pid = int(path.stem.split("-", 1)[1])
                snap = orjson.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            out.append((snap, pid_alive(pid)))
        return out
