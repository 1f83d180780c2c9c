"""What a runner worker tells ``/metrics``: batches it ran and their sizes, queue depth, restarts, memory.

The runner worker is the only process that sees its batches as they are (a
client sees only the batch its own call landed in), so it counts them itself
and, at most once a second, writes a snapshot to
``<runtime dir>/<runner>-<index>.stats.json`` (atomically: temp file, then
rename). The API worker's ``/metrics`` reads the snapshots of its service's
runners at scrape time (`read_worker_stats`). A snapshot is plain JSON of
numbers; nothing in it comes from a request.

A snapshot names the worker's lease (`shmserve.lease`), and its temp file is
``.<runner>-<index>.stats.<lease>.tmp``: so the sweep at every start
(`shmserve.registry.sweep`) removes both once the worker is dead, however it
died (SIGKILL, OOM kill), and keeps those of live workers, also those of other
servers sharing the runtime directory or running in another PID namespace.

Counting a batch is one histogram update; the file write happens on the
dispatch loop's idle checks, never between a call and its result.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from . import lease
from .registry import pid_alive, runtime_dir

__all__ = ["WorkerStats", "read_worker_stats", "stats_path", "PUBLISH_EVERY_S", "BATCH_BOUNDS"]

PUBLISH_EVERY_S = 1.0
#: batch size histogram bounds (items per batch), as the API worker's runner histograms
BATCH_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def stats_path(runner: str, index: int) -> Path:
    """Where worker `index` of `runner` publishes its snapshot."""
    return runtime_dir() / f"{runner}-{index}.stats.json"


class _Sizes:
    """Batch-size histogram of one method (``counts[i]``: batches of at most ``BATCH_BOUNDS[i]`` items)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BATCH_BOUNDS) + 1)
        self.sum = 0
        self.count = 0

    def observe(self, items: int) -> None:
        i = 0
        while i < len(BATCH_BOUNDS) and items > BATCH_BOUNDS[i]:
            i += 1
        self.counts[i] += 1
        self.sum += items
        self.count += 1


class WorkerStats:
    """The counters of one runner worker process."""

    def __init__(self, runner: str, index: int, methods: list[str], restarts: int, path: Path | None = None) -> None:
        self.runner = runner
        self.index = index
        self.methods = methods
        self.restarts = restarts
        self.path = path if path is not None else stats_path(runner, index)
        self.sizes = [_Sizes() for _ in methods]
        self._due = 0.0

    def on_batch(self, method: int, items: int) -> None:
        """Count one batch of `items` items run by method number `method`."""
        self.sizes[method].observe(items)

    def due(self, now: float) -> bool:
        """Whether a snapshot should be written now (at most once per `PUBLISH_EVERY_S`)."""
        if now < self._due:
            return False
        self._due = now + PUBLISH_EVERY_S
        return True

    def snapshot(self, queue_depth: int, shm_bytes: int) -> dict[str, Any]:
        """This worker's numbers as plain data."""
        return {
            "runner": self.runner, "worker": self.index, "pid": os.getpid(), "lease": lease.current().id,
            "time": time.time(),
            "restarts": self.restarts, "queue_depth": queue_depth, "shm_bytes": shm_bytes,
            "methods": {name: {"counts": s.counts, "sum": s.sum, "count": s.count}
                        for name, s in zip(self.methods, self.sizes)},
        }

    def publish(self, queue_depth: int, shm_bytes: int) -> None:
        """Replace the snapshot file (a failure to write only loses this snapshot)."""
        tmp = self._tmp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(self.snapshot(queue_depth, shm_bytes)))
            os.replace(tmp, self.path)
        except OSError:
            pass

    def _tmp_path(self) -> Path:
        # Named like the registry's staged records (".<name>.<lease>.tmp"), which the sweep knows.
        return self.path.with_name(f".{self.path.name[:-len('.json')]}.{lease.current().id}.tmp")

    def unlink(self) -> None:
        """Remove the snapshot file (the worker is stopping)."""
        for p in (self.path, self._tmp_path()):
            try:
                os.unlink(p)
            except OSError:
                pass


def read_worker_stats(runners: list[str], directory: Path | None = None) -> list[dict[str, Any]]:
    """The snapshots of the live workers of `runners` (a dead worker's file, its lease not held, is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        where = directory if directory is not None else runtime_dir()
    except OSError:
        return out
    for name in runners:
        for path in where.glob(f"{name}-*.stats.json"):
            try:
                snap = orjson.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(snap, dict) and snap.get("runner") == name and _alive(snap):
                out.append(snap)
    return out


def _alive(snap: dict[str, Any]) -> bool:
    """Whether the worker that wrote `snap` runs: its lease is held (the pid, for a snapshot without one)."""
    held = snap.get("lease")
    if isinstance(held, str):
        return lease.state(held) == lease.LIVE
    return pid_alive(int(snap.get("pid", 0)))
