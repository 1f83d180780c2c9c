"""The Runnable of tests/integration/test_readme_claims.py; module level so spawned workers import it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

import shmserve


def wait_for_file(path: Path, timeout: float = 30.0) -> bool:
    """Poll for `path` to exist, at most `timeout` seconds; whether it appeared."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class ClaimsRunnable(shmserve.Runnable):
    """A gated method that holds the worker until the test lets it go, and probes of what a batch saw."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, gate_dir: str) -> None:
        self.gate = Path(gate_dir)

    @shmserve.Runnable.method(batchable=False)
    def hold(self, name: str, x: np.ndarray | None = None) -> int:
        """Say `<name>.started`, then keep the worker (and `x`'s arena space) until `<name>.go` exists."""
        (self.gate / f"{name}.started").touch()
        wait_for_file(self.gate / f"{name}.go")
        return os.getpid()

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def rows(self, x: np.ndarray, tag: str = "a") -> np.ndarray:
        """For every item, the number of items in the batch it was served in."""
        return np.full((x.shape[0],), x.shape[0], dtype=np.int64)

    @shmserve.Runnable.method(batchable=False)
    def nbytes(self, x: np.ndarray) -> int:
        return int(x.nbytes)
