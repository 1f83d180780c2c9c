"""Trust in results: every caller gets its own answer, and results are let go of when dropped.

Real worker processes over shared memory. The stress test runs many callers at once (sync threads
and event-loop tasks), with timeouts and cancellations mid-flight, small arenas (so request and
result blocks are reused quickly), results both copied and leased, and a model of variable latency;
every answer is checked against a value derived from its own input.
"""
from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import shmserve
from shmserve.errors import RunnerError, RunnerOverloaded, RunnerTimeout, TensorTooLarge
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

BIG = 1_200_000  # bytes: a leased result (over the client's copy limit) taking most of a 2 MB arena


class Tagged(shmserve.Runnable):
    """Answers derived from the input, at a latency that varies from batch to batch."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def f(self, x: np.ndarray) -> np.ndarray:
        if random.random() < 0.3:
            time.sleep(random.random() * 0.003)
        return x * 2 + 1

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def ident(self, x: np.ndarray) -> np.ndarray:
        """Returns its input: the result is a view of the request arena until it is written back."""
        if random.random() < 0.3:
            time.sleep(random.random() * 0.003)
        return x

    @shmserve.Runnable.method(batchable=False)
    def big(self, n: int) -> np.ndarray:
        return np.full(n, 7, np.uint8)

    @shmserve.Runnable.method
    def spill(self, n: int) -> Any:
        """A stream of one large item, then an error."""
        yield np.full(n, 7, np.uint8)
        raise ValueError("the stream broke on purpose")

    @shmserve.Runnable.method(batchable=False)
    def boom(self, x: Any) -> None:
        raise ValueError("model exploded on purpose")

    @shmserve.Runnable.method(batchable=False)
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@pytest.fixture
def tagged(unique_name: str, shm_clean: None) -> Iterator[shmserve.Runner]:
    r = shmserve.Runner(Tagged, name=unique_name, arena_mb=2, max_latency_ms=2, max_batch_size=16, timeout=30)
    with shmserve.start(r, workers=1):
        yield r


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Cyclic garbage collection off: what only the collector would free stays held."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


# -- leased results are let go of when the caller drops them ----------------------------------------
def _fits_again(r: shmserve.Runner) -> None:
    """Another result of most of the arena is answered: the earlier one's block was let go of."""
    y = r.big.run(BIG, timeout=10)
    assert int(y[0]) == 7
    del y


def test_a_leased_result_is_freed_when_dropped_after_a_failed_call_sync(tagged: shmserve.Runner, no_gc: None) -> None:
    # A failed call raises its error; the error's traceback must not keep the caller's frame (and
    # the leased result held there) alive in a reference cycle only the garbage collector frees:
    # until then that result's block holds the channel's result arena, and every later result that
    # needs the room waits 2 s and fails with TensorTooLarge.
    def caller() -> int:
        u = tagged.big.run(BIG)  # leased in place
        with pytest.raises(RunnerError):
            tagged.boom.run(0)
        return int(u[0])

    assert caller() == 7
    _fits_again(tagged)


def test_a_leased_result_is_freed_when_dropped_after_a_failed_call_async(tagged: shmserve.Runner, no_gc: None) -> None:
    async def caller() -> int:
        u = await tagged.big.async_run(BIG)
        with pytest.raises(RunnerError):
            await tagged.boom.async_run(0)
        with pytest.raises(RunnerTimeout):
            await tagged.nap.async_run(0.5, timeout=0.05)
        return int(u[0])

    async def main() -> None:
        assert await caller() == 7
        y = await tagged.big.async_run(BIG, timeout=10)
        assert int(y[0]) == 7

    asyncio.run(main())


def test_a_leased_item_is_freed_when_dropped_after_a_stream_failed(tagged: shmserve.Runner, no_gc: None) -> None:
    def sync_consumer() -> int:
        got = []
        with pytest.raises(RunnerError, match="broke on purpose"):
            for item in tagged.spill.stream(BIG):
                got.append(item)
        return int(got[0][0])

    async def async_consumer() -> int:
        got = []
        with pytest.raises(RunnerError, match="broke on purpose"):
            async for item in tagged.spill.async_stream(BIG):
                got.append(item)
        return int(got[0][0])

    assert sync_consumer() == 7
    _fits_again(tagged)
    assert asyncio.run(async_consumer()) == 7
    _fits_again(tagged)


# -- many callers, every answer checked -------------------------------------------------------------
ALLOWED = (RunnerTimeout, RunnerOverloaded, TensorTooLarge)  # errors that say so; never a wrong answer
STRESS_S = 5.0


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.wrong: list[str] = []
        self.held: list[tuple[np.ndarray, np.ndarray]] = []  # (result kept for a while, its copy)

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def check(self, method: str, x: np.ndarray, y: Any, where: str, rnd: random.Random) -> None:
        want = x * 2 + 1 if method == "f" else x
        if not (isinstance(y, np.ndarray) and y.shape == want.shape and np.array_equal(y, want)):
            got = y[:, 0].tolist() if isinstance(y, np.ndarray) and y.ndim == 2 else repr(y)[:80]
            with self.lock:
                self.wrong.append(f"{where}: {method} of rows {x[:, 0].tolist()} answered {got}")
            return
        self.add("ok")
        if rnd.random() < 0.1:  # keep some results while later calls reuse the arenas around them
            with self.lock:
                self.held.append((y, y.copy()))
                if len(self.held) > 4:
                    kept, copy = self.held.pop(0)
                    if not np.array_equal(kept, copy):
                        self.wrong.append(f"{where}: a result changed while it was held")


def _call_input(rnd: random.Random, tag: int) -> tuple[str, np.ndarray]:
    rows = rnd.randint(1, 4)
    width = rnd.choice([1, 3, 64, 700, 3000])  # 8 B to 24 KB a row: results copied out and leased
    x = np.repeat(np.arange(tag, tag + rows, dtype=np.float64)[:, None], width, axis=1)
    return rnd.choice(["f", "ident"]), x


def _sync_caller(r: Any, k: int, until: float, tally: Tally) -> None:
    rnd = random.Random(k)
    i = 0
    while time.monotonic() < until:
        i += 1
        method, x = _call_input(rnd, (k * 1_000_000 + i) * 8)
        timeout = rnd.choice([None, None, None, 0.001, 0.01])
        try:
            y = getattr(r, method).run(x, timeout=timeout)
        except ALLOWED as exc:
            tally.add(type(exc).__name__)
            continue
        tally.check(method, x, y, f"sync caller {k} call {i}", rnd)


async def _async_caller(r: Any, k: int, until: float, tally: Tally) -> None:
    rnd = random.Random(k)
    i = 0
    while time.monotonic() < until:
        i += 1
        method, x = _call_input(rnd, (k * 1_000_000 + i) * 8)
        timeout = rnd.choice([None, None, 0.001, 0.005])
        task = asyncio.ensure_future(getattr(r, method).async_run(x, timeout=timeout))
        if rnd.random() < 0.15:  # the caller goes away mid-flight (an HTTP client hanging up)
            await asyncio.sleep(rnd.random() * 0.003)
            task.cancel()
        try:
            y = await task
        except asyncio.CancelledError:
            tally.add("cancelled")
            continue
        except ALLOWED as exc:
            tally.add(type(exc).__name__)
            continue
        tally.check(method, x, y, f"async caller {k} call {i}", rnd)


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure-python"])
def test_many_callers_each_get_their_own_answer(unique_name: str, shm_clean: None, pure: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's ring work runs in C when built (shmserve.worker.rows); the pure-Python worker
    # (SHMSERVE_PURE_PYTHON=1, inherited by the spawned worker) must serve the same answers.
    if pure:
        monkeypatch.setenv("SHMSERVE_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("SHMSERVE_PURE_PYTHON", raising=False)
    r = shmserve.Runner(Tagged, name=unique_name, arena_mb=1, max_latency_ms=2, max_batch_size=16, timeout=30)
    tally = Tally()
    with shmserve.start(r, workers=1):
        with shmserve.connect(unique_name) as other:  # a second channel: batches joined across channels
            until = time.monotonic() + STRESS_S

            def loop(first: int) -> None:
                async def main() -> None:
                    await asyncio.gather(*(_async_caller(r, first + j, until, tally) for j in range(8)))
                asyncio.run(main())

            threads = [threading.Thread(target=_sync_caller, args=(r if k % 2 else other, k, until, tally))
                       for k in range(6)]
            threads += [threading.Thread(target=loop, args=(100 + 10 * j,)) for j in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(STRESS_S + 60)
            assert not any(t.is_alive() for t in threads), "a caller hung"
            assert not tally.wrong, f"{len(tally.wrong)} wrong answers, first: {tally.wrong[:3]} ({tally.counts})"
            assert tally.counts.get("ok", 0) >= 100, tally.counts
            tally.held.clear()
            gc.collect()
            # Nothing was leaked: with every result dropped, one needing most of the arena fits.
            for client in (r, other):
                y = client.big.run(800_000, timeout=10)
                assert int(y[-1]) == 7
                del y


# -- exit while calls are in flight ---------------------------------------------------------------
EXIT_MID_CALL = textwrap.dedent('''
    import sys, threading, time
    import numpy as np
    import shmserve

    runner = shmserve.connect(sys.argv[1])

    def caller():
        while True:
            runner.nap.run(0.05)

    for _ in range(3):
        threading.Thread(target=caller, daemon=True).start()
    time.sleep(0.3)
    raise RuntimeError("the main thread fails while other threads wait for results")
''')


def test_a_process_exiting_while_threads_wait_for_results_exits_cleanly(tagged: shmserve.Runner) -> None:
    # The client's reply semaphore was closed at interpreter exit while daemon threads still waited
    # on it: the process died of SIGSEGV instead of exiting with its error.
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", EXIT_MID_CALL, tagged.name], capture_output=True, timeout=60,
                             cwd=ROOT)
        assert out.returncode == 1, (out.returncode, out.stderr.decode(errors="replace")[-2000:])
        assert b"RuntimeError: the main thread fails" in out.stderr
    assert tagged.nap.run(0.0) == 0.0  # the runner serves on
