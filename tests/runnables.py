"""Runnables used by the tests; module level so spawned workers can import them."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np

import shmserve


class EchoRunnable(shmserve.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls: list[int] = []

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale

    @shmserve.Runnable.method(batchable=True, batch_dim=1)
    def predict_dim1(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def batch_sizes(self, x: np.ndarray) -> np.ndarray:
        """Returns, for each item, the size of the batch it was served in."""
        time.sleep(0.002)
        return np.full((x.shape[0],), x.shape[0], dtype=np.int64)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def batch_info(self, x: np.ndarray) -> np.ndarray:
        """Per item: [batch size, 1 if the batch owns its memory (a gather copy) else 0]."""
        time.sleep(0.002)
        return np.tile(np.array([x.shape[0], int(x.flags.owndata)], np.int64), (x.shape[0], 1))

    @shmserve.Runnable.method(batchable=False)
    def describe(self, x: np.ndarray, tag: str = "") -> dict:
        return {"shape": list(x.shape), "tag": tag, "sum": float(x.sum())}

    @shmserve.Runnable.method(batchable=False)
    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple:
        return a + b, (a - b).astype(np.float64)

    @shmserve.Runnable.method(batchable=False)
    def boom(self, x: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded on purpose")

    @shmserve.Runnable.method(batchable=False)
    def sleep(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @shmserve.Runnable.method(batchable=False)
    def pid(self) -> int:
        return os.getpid()

    @shmserve.Runnable.method(batchable=False)
    def big(self, nbytes: int) -> np.ndarray:
        return np.ones(nbytes, dtype=np.uint8)


class GuardedRunnable(shmserve.Runnable):
    """Methods for the hardening tests: zero-item calls, slow and hung batches, counted calls."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self) -> None:
        self.ran = 0

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        self.ran += len(x)
        return x * 2

    @shmserve.Runnable.method(batchable=True, batch_dim=0, accepts_empty=True)
    def rows(self, x: np.ndarray) -> np.ndarray:
        """Per item, how many rows its batch had; an empty call gets an empty answer."""
        return np.full((x.shape[0],), x.shape[0], dtype=np.int64)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def slow(self, x: np.ndarray) -> np.ndarray:
        """Sleeps x[0, 0] seconds per batch and counts the items it served."""
        time.sleep(float(x[0, 0]))
        self.ran += len(x)
        return x

    @shmserve.Runnable.method(batchable=False)
    def served(self) -> int:
        """How many items `predict` and `slow` have run."""
        return self.ran

    @shmserve.Runnable.method(batchable=False)
    def pid(self) -> int:
        return os.getpid()


class MediaRunnable(shmserve.Runnable):
    """bytes and PIL images in and out (they cross as raw buffers)."""

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def reverse(self, data: bytes) -> bytes:
        """Batchable, but calls carrying bytes are never joined: each gets its own bytes."""
        assert isinstance(data, bytes)
        return data[::-1]

    @shmserve.Runnable.method
    def flip(self, img):
        from PIL import ImageOps

        return ImageOps.mirror(img), img.mode, list(img.size)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def total(self, df):
        """A DataFrame in and out: its numeric columns crossed as arrays."""
        return df.assign(total=df["a"] + df["b"])


class StreamRunnable(shmserve.Runnable):
    """Generator methods: their items stream back (runner.<method>.async_stream)."""

    def __init__(self) -> None:
        self.stopped = 0
        self.produced = 0

    @shmserve.Runnable.method
    def count(self, n: int):
        for i in range(n):
            yield np.full(2, i)

    @shmserve.Runnable.method
    async def words(self, text: str):
        for w in text.split():
            await asyncio.sleep(0)
            yield w

    @shmserve.Runnable.method
    def gated(self, path: str):
        """Yields 'first', then waits (up to 10 s) for `path` to exist before yielding 'second'."""
        yield "first"
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield "second"

    @shmserve.Runnable.method
    def forever(self):
        try:
            while True:
                self.produced += 1
                yield self.produced
                time.sleep(0.002)
        finally:
            self.stopped += 1

    @shmserve.Runnable.method
    def fails(self):
        yield 1
        raise ValueError("broken stream")

    @shmserve.Runnable.method
    def big(self, nbytes: int):
        """Yields one small item, then one of `nbytes` bytes (more than a small arena holds)."""
        try:
            yield np.zeros(4, np.uint8)
            yield np.zeros(nbytes, np.uint8)
        finally:
            self.stopped += 1

    @shmserve.Runnable.method
    def stats(self) -> dict:
        return {"stopped": self.stopped, "produced": self.produced}


class ParkingRunnable(shmserve.Runnable):
    """For the result-parking test: results of a chosen size, and a mark file once the model ran."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, result_wait_s: float) -> None:
        # How long a parked result waits for room (2 s by default): long enough here that the test
        # never depends on how fast a loaded machine runs the steps in between.
        from shmserve.worker import results

        results.RESULT_SPACE_WAIT_S = result_wait_s

    @shmserve.Runnable.method(batchable=False)
    def big(self, nbytes: int, mark: str = "") -> np.ndarray:
        if mark:
            with open(mark, "w"):
                pass
        return np.ones(nbytes, dtype=np.uint8)
