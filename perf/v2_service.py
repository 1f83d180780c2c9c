"""Service for perf/bench_v2.py: the common MLP (as in examples/service_mlp.py) and a cheap large-input model.

``mlp<suffix>.predict`` is the workload's MLP with its batching settings (64 / 10 ms).
``big<suffix>.head`` takes a large tensor and returns its first row, so a 16 MB
round trip measures moving the input, not computing on it; ``big<suffix>.same``
returns its input, so a 16 MB output is moved too; its arena holds a 16 MB
input or result.
"""
from __future__ import annotations

import os

import numpy as np
from workload import MAX_BATCH_SIZE, MAX_LATENCY_MS, MLP

import shmserve


class MLPRunnable(shmserve.Runnable):
    """The common workload's MLP."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self) -> None:
        self.mlp = MLP(0)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.mlp(x)


class HeadRunnable(shmserve.Runnable):
    """Returns the first row of its input."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @shmserve.Runnable.method()
    def head(self, x: np.ndarray) -> np.ndarray:
        return np.array(x[:1])

    @shmserve.Runnable.method()
    def same(self, x: np.ndarray) -> np.ndarray:
        return x


# Runner names are unique per host; the suffix keeps this run apart from other servers of the shared machine.
SUFFIX = os.environ.get("V2_BENCH_SUFFIX", "")
mlp = shmserve.Runner(MLPRunnable, name="mlp" + SUFFIX, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS, workers=1)
big = shmserve.Runner(HeadRunnable, name="big" + SUFFIX, workers=1, arena_mb=48)
svc = shmserve.Service("v2_bench", runners=[mlp, big])
