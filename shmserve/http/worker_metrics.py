"""Metrics from outside the API worker: the runner workers' own counts, /dev/shm, the build.

A prometheus-client collector registered next to `shmserve.http.metrics.Metrics`;
everything is read at scrape time, so serving requests pays nothing for it.

- ``shmserve_runner_worker_batches_total{runner,method,worker}``: batches the
  runner worker ran (as it saw them: every client's calls together).
- ``shmserve_runner_worker_batch_size{runner,method,worker}``: histogram of items per batch.
- ``shmserve_runner_worker_queue_depth{runner,worker}``: calls read but not yet run.
- ``shmserve_runner_worker_restarts_total{runner,worker}``: times the worker slot was restarted.
- ``shmserve_runner_worker_shm_bytes{runner,worker}``: shared memory of the client
  channels the worker has mapped.
- ``shmserve_dev_shm_free_bytes`` and ``shmserve_dev_shm_size_bytes``: the
  ``/dev/shm`` file system (a full one makes every new channel fail).
- ``shmserve_build_info{version,python}``: always 1.

Runner worker numbers come from the snapshots they publish about once a second
(`shmserve.worker_stats`), so they trail by up to a second.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import __version__
from ..worker_stats import BATCH_BOUNDS, read_worker_stats

__all__ = ["WorkerMetrics", "SHM_DIR"]

SHM_DIR = "/dev/shm"


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(BATCH_BOUNDS, counts, strict=False):
        acc += n
        out.append((str(bound), acc))
    out.append(("+Inf", acc + (counts[-1] if len(counts) > len(BATCH_BOUNDS) else 0)))
    return out


class WorkerMetrics:
    """Collector of the runner workers of `runners`, /dev/shm and the build info."""

    def __init__(self, runners: list[str], version: str = __version__,
                 read: Callable[[list[str]], list[dict[str, Any]]] = read_worker_stats, shm_dir: str = SHM_DIR) -> None:
        self.runners = list(runners)
        self.version = version
        self._read = read
        self.shm_dir = shm_dir

    def collect(self) -> Iterator[Any]:
        """Yield metric families (called by the registry at scrape time)."""
        batches = CounterMetricFamily("shmserve_runner_worker_batches", "Batches run by the runner worker.",
                                      labels=["runner", "method", "worker"])
        sizes = HistogramMetricFamily("shmserve_runner_worker_batch_size",
                                      "Items per batch, as the runner worker ran them.",
                                      labels=["runner", "method", "worker"])
        depth = GaugeMetricFamily("shmserve_runner_worker_queue_depth", "Calls waiting in the runner worker.",
                                  labels=["runner", "worker"])
        restarts = CounterMetricFamily("shmserve_runner_worker_restarts", "Restarts of the runner worker slot.",
                                       labels=["runner", "worker"])
        shm = GaugeMetricFamily("shmserve_runner_worker_shm_bytes",
                                "Shared memory of the client channels the runner worker has mapped.",
                                labels=["runner", "worker"])
        snaps = self._read(self.runners) if self.runners else []
        for snap in sorted(snaps, key=lambda s: (str(s.get("runner")), int(s.get("worker", 0)))):
            runner, worker = str(snap["runner"]), str(snap.get("worker", 0))
            for method, h in sorted((snap.get("methods") or {}).items()):
                labels = [runner, method, worker]
                batches.add_metric(labels, h.get("count", 0))
                sizes.add_metric(labels, _buckets(list(h.get("counts", []))), h.get("sum", 0))
            depth.add_metric([runner, worker], snap.get("queue_depth", 0))
            restarts.add_metric([runner, worker], snap.get("restarts", 0))
            shm.add_metric([runner, worker], snap.get("shm_bytes", 0))
        yield from (batches, sizes, depth, restarts, shm)
        try:
            st = os.statvfs(self.shm_dir)
        except OSError:
            pass
        else:
            yield GaugeMetricFamily("shmserve_dev_shm_free_bytes", f"Free bytes of {self.shm_dir}.",
                                    value=st.f_bavail * st.f_frsize)
            yield GaugeMetricFamily("shmserve_dev_shm_size_bytes", f"Size of {self.shm_dir}.",
                                    value=st.f_blocks * st.f_frsize)
        info = GaugeMetricFamily("shmserve_build_info", "shmserve version and Python version (always 1).",
                                 labels=["version", "python"])
        info.add_metric([self.version, platform.python_version()], 1)
        yield info
