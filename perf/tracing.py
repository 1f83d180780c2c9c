"""Collect per-call traces from `shmserve.client.add_trace_hook` and turn them into figures.

A trace holds CLOCK_MONOTONIC seconds along one call's path: submit, dequeue,
batch_start, model_start, model_end, written, complete, and batch_size.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .stats import histogram

# Consecutive trace points and the name of the time between them.
SEGMENTS = (
    ("submit", "dequeue", "queue wait + wake-up (to worker)"),
    ("dequeue", "batch_start", "dispatch"),
    ("batch_start", "model_start", "batch assembly"),
    ("model_start", "model_end", "model"),
    ("model_end", "written", "result write"),
    ("written", "complete", "wake-up (to caller) + read"),
)


class TraceCollector:
    """A trace hook that keeps the traces of one runner while `recording` is on."""

    def __init__(self, runner_name: str | None = None) -> None:
        self.runner_name = runner_name
        self.recording = False
        self._lock = threading.Lock()
        self._traces: list[dict[str, Any]] = []

    def __call__(self, runner: str, method: str, trace: dict[str, Any]) -> None:
        if self.recording and (self.runner_name is None or runner == self.runner_name):
            with self._lock:
                self._traces.append(dict(trace))

    def take(self) -> list[dict[str, Any]]:
        """Return the traces gathered so far and start afresh."""
        with self._lock:
            out, self._traces = self._traces, []
        return out


def install(collector: TraceCollector) -> bool:
    """Register `collector` as a trace hook; False when this shmserve has no trace hooks."""
    try:
        from shmserve.client import add_trace_hook
    except ImportError:
        return False
    add_trace_hook(collector)
    return True


def uninstall(collector: TraceCollector) -> None:
    """Unregister the hook where shmserve supports it; otherwise just stop recording."""
    collector.recording = False
    try:
        from shmserve.client import remove_trace_hook  # type: ignore[attr-defined]
    except ImportError:
        return
    remove_trace_hook(collector)


def batches(traces: list[dict[str, Any]]) -> list[int]:
    """Size of each distinct batch seen: calls served together share their model_start."""
    seen: dict[tuple[float, float], int] = {}
    for t in traces:
        if "batch_size" not in t:
            continue
        key = (round(float(t.get("model_start", 0.0)), 7), round(float(t.get("model_end", 0.0)), 7))
        seen[key] = int(t["batch_size"])
    return list(seen.values())


def batch_stats(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean batch size per batch and per call, and the per-batch size histogram."""
    sizes = batches(traces)
    per_call = [int(t["batch_size"]) for t in traces if "batch_size" in t]
    return {
        "batches": len(sizes),
        "mean_batch_size": float(np.mean(sizes)) if sizes else float("nan"),
        "mean_batch_size_per_call": float(np.mean(per_call)) if per_call else float("nan"),
        "histogram": histogram(sizes),
    }


def breakdown(traces: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and p99 µs of each segment of the path, over the calls that recorded both ends."""
    out: dict[str, dict[str, float]] = {}
    for start, end, label in SEGMENTS:
        d = [(t[end] - t[start]) * 1e6 for t in traces if start in t and end in t]
        if d:
            arr = np.asarray(d)
            out[label] = {"p50_us": float(np.median(arr)), "p99_us": float(np.percentile(arr, 99)), "n": len(d)}
    total = [(t["complete"] - t["submit"]) * 1e6 for t in traces if "complete" in t and "submit" in t]
    if total:
        out["total (submit -> complete)"] = {"p50_us": float(np.median(total)),
                                            "p99_us": float(np.percentile(total, 99)), "n": len(total)}
    return out
