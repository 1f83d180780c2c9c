"""Runnables the perf suite serves. Module-level so runner worker processes can import them."""
from __future__ import annotations

from typing import Any

import numpy as np

import shmserve


class EchoRunnable(shmserve.Runnable):
    """Returns its input: every microsecond of a call is transport."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @shmserve.Runnable.method(batchable=False)
    def echo(self, x: np.ndarray) -> np.ndarray:
        """The input itself; the runtime still writes it into the response arena."""
        return x


class MLPRunnable(shmserve.Runnable):
    """The common workload's MLP (784 -> 1024 -> 10), batchable along dim 0."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, seed: int = 0) -> None:
        from workload import MLP  # the common workload folder is on PYTHONPATH

        self.model: Any = MLP(seed)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, 784) float32 -> (n, 10) float32."""
        return self.model(x)
