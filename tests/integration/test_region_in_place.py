"""Inputs in a registered client region reach the runner worker without a copy into the request arena."""
from __future__ import annotations

import mmap
import os
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import shmserve
from shmserve.oip.errors import InferError
from shmserve.oip.regions import SHM_DIR, RegionTable
from tests.runnables import EchoRunnable

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture
def echo(unique_name, shm_clean) -> Iterator[shmserve.Runner]:
    # a 1 MiB request arena: a 4 MiB input can only reach the worker in place
    r = shmserve.Runner(EchoRunnable, name=unique_name, arena_mb=1, max_latency_ms=1)
    with shmserve.start(r, workers=1):
        yield r


class Objects:
    """POSIX shared-memory objects as a client makes them (mode 0600); all removed at the end."""

    def __init__(self) -> None:
        self.made: list[tuple[str, mmap.mmap]] = []

    def make(self, nbytes: int) -> tuple[str, mmap.mmap]:
        key = "/v2test_" + uuid.uuid4().hex[:12]
        fd = os.open(os.path.join(SHM_DIR, key[1:]), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            m = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        self.made.append((key, m))
        return key, m

    def remove(self) -> None:
        for key, m in self.made:
            m.close()
            os.unlink(os.path.join(SHM_DIR, key[1:]))


@pytest.fixture
def objects() -> Iterator[Objects]:
    o = Objects()
    yield o
    o.remove()


def worker_maps(r: shmserve.Runner) -> str:
    with open(f"/proc/{r.pid.run()}/maps") as f:
        return f.read()


def region_input(table: RegionTable, objects: Objects, name: str, nbytes: int, seed: int) -> tuple[str, np.ndarray]:
    key, m = objects.make(nbytes)
    np.frombuffer(m, np.float32)[:] = np.random.default_rng(seed).standard_normal(nbytes // 4, np.float32)
    table.register(name, key, 0, nbytes)
    return key, np.frombuffer(table.view(name, 0, nbytes, "input"), np.float32).reshape(-1, 1024)


def test_a_region_input_larger_than_the_arena_is_read_in_place(echo, objects) -> None:
    table = RegionTable()
    try:
        key, x = region_input(table, objects, "in", 4 * MB, 1)
        got = echo.describe.run(x)
        assert got["shape"] == [1024, 1024] and got["sum"] == pytest.approx(float(x.sum()), rel=1e-4)
        assert key[1:] in worker_maps(echo)  # the worker mapped the client's object itself
        # the same bytes copied out of the region do not fit the 1 MiB arena
        with pytest.raises(shmserve.errors.TensorTooLarge):
            echo.describe.run(x.copy())
        del x
    finally:
        table.close()


def test_unregister_while_a_call_is_in_flight_is_safe(echo, objects) -> None:
    table = RegionTable()
    try:
        _key, x = region_input(table, objects, "a", 4 * MB, 2)
        expected = float(x.sum())
        results: dict[str, object] = {}
        busy = threading.Thread(target=lambda: results.update(busy=echo.sleep.run(0.5)))
        busy.start()  # holds the worker so the region call waits in its queue

        def queued(arr: np.ndarray) -> None:
            try:
                results["a"] = echo.describe.run(arr)["sum"]
            except Exception as exc:  # the unregister may win: then a clear refusal
                results["a"] = exc

        caller = threading.Thread(target=queued, args=(x,))
        caller.start()
        table.unregister("a")  # the caller's array still views the mapping: it is retired, not closed
        with pytest.raises(InferError, match="no shared-memory region named 'a'"):
            table.view("a", 0, 16, "input")
        # another region reuses the link's entry while the first call may still wait for the worker
        key_b, y = region_input(table, objects, "b", 2 * MB, 3)
        assert echo.describe.run(y)["sum"] == pytest.approx(float(y.sum()), rel=1e-4)
        busy.join(10)
        caller.join(10)
        a = results["a"]
        if isinstance(a, Exception):
            assert "unregistered" in str(a), a
        else:
            assert a == pytest.approx(expected, rel=1e-4)
        del x, y
        assert key_b[1:] in worker_maps(echo)
    finally:
        table.close()
