"""In-process backend: `runner.init_local()` and embedded runners (no processes, no shared memory)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .deadline import call_deadline
from .errors import ConfigError, InvalidInput, RunnerTimeout
from .tensors import is_tensor


class RunnerSpec(Protocol):
    """What this backend reads of a `shmserve.Runner` (a protocol, so that runner -> local stays one-way)."""

    @property
    def name(self) -> str: ...

    @property
    def runnable_class(self) -> type: ...

    @property
    def runnable_init_params(self) -> Mapping[str, Any]: ...

    @property
    def method_configs(self) -> Mapping[str, Any]: ...

_END = object()  # what next() returns for an exhausted generator


class LocalBackend:
    """Calls the Runnable's methods directly in the calling process.

    Async calls run on one thread of this backend's own, so that a slow method
    never blocks the event loop, and calls reach the instance one at a time,
    as they would in a worker process. Sync calls with a deadline (their
    `timeout`, the runner's, or the request's) run on that thread too, so a call
    still running when it is due raises RunnerTimeout; a runner with
    ``timeout=None`` called outside a request with a deadline runs sync calls in
    the calling thread. Calls are checked as a worker checks them (a zero-item
    call of a batchable method is refused with the same message).
    """

    def __init__(self, runner: RunnerSpec) -> None:
        self.runner = runner
        self.instance = runner.runnable_class(**runner.runnable_init_params)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _method(self, method: str) -> Any:
        if method not in self.runner.method_configs:
            raise ConfigError(f"runner {self.runner.name!r} has no method {method!r}")
        return getattr(self.instance, method)

    def _checked(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The bound method, once the call passes the checks a worker makes before running it."""
        func = self._method(method)
        sig = self.runner.method_configs[method].signature
        if sig.batchable and not sig.accepts_empty:
            # the tensors a worker counts along the batch dim
            shapes = [tuple(v.shape) for v in (*args, *kwargs.values()) if is_tensor(v)]
            if any(len(s) > sig.input_dim and s[sig.input_dim] == 0 for s in shapes):
                raise InvalidInput(sig.empty_call_error(shapes))
        return func

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run the method; with a timeout (its own, the runner's or the request's) on this backend's
        thread, so that a call still running when it is due raises RunnerTimeout instead of hanging."""
        func = self._checked(method, args, kwargs)
        wait = wait_s(timeout)
        if wait is None:
            return func(*args, **kwargs)  # nothing bounds it: no thread hop
        fut = self._pool().submit(func, *args, **kwargs)
        try:
            return fut.result(wait)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # not started yet (behind another call): it never runs
            raise self._timed_out(method, timeout, wait) from None

    async def async_call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        func = self._checked(method, args, kwargs)
        fut = asyncio.get_running_loop().run_in_executor(self._pool(), lambda: func(*args, **kwargs))
        wait = wait_s(timeout)
        if wait is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, wait)
        except asyncio.TimeoutError:
            raise self._timed_out(method, timeout, wait) from None

    def _timed_out(self, method: str, timeout: float | None, waited: float) -> RunnerTimeout:
        # `waited` is what wait_s() gave: the timeout (less the microseconds since), unless the request's came sooner
        why = f"its timeout, {timeout} s" if timeout is not None and waited > timeout - 0.001 else \
            "the deadline of the request it serves"
        return RunnerTimeout(f"call to {self.runner.name}.{method} timed out: no result by its deadline ({why})")

    async def async_stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> AsyncGenerator[Any, None]:
        """A generator method's items; a sync generator advances on this backend's thread.

        `timeout` bounds the wait for each item, as it does for a served runner."""
        gen = self._method(method)(*args, **kwargs)
        if inspect.isasyncgen(gen):
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(gen.__anext__(), wait_s(timeout))
                    except StopAsyncIteration:
                        return
                    except asyncio.TimeoutError:
                        raise self._no_item(method, timeout) from None
                    yield item
            finally:
                await gen.aclose()
            return
        async for item in iterate_on(gen, self._pool(), timeout, lambda: self._no_item(method, timeout)):
            yield item

    def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Iterator[Any]:
        """`async_stream` for synchronous code: each item is produced on this backend's thread."""
        gen = self._method(method)(*args, **kwargs)
        pool = self._pool()
        if inspect.isasyncgen(gen):
            loop = asyncio.new_event_loop()  # the generator's own, run on the backend's thread
            step: Any = functools.partial(_anext_on, loop, gen)
            close: Any = functools.partial(_aclose_on, loop, gen)
        else:
            step, close = functools.partial(next, gen, _END), gen.close
        return _sync_items(pool, step, close, timeout, lambda: self._no_item(method, timeout))

    def _no_item(self, method: str, timeout: float | None) -> RunnerTimeout:
        return RunnerTimeout(f"no item of {self.runner.name}.{method} within its timeout"
                             + (f" ({timeout} s)" if timeout is not None else " (the request's deadline passed)"))

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shmserve-{self.runner.name}")
            return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.instance = None  # type: ignore[assignment]


def wait_s(timeout: float | None) -> float | None:
    """Seconds a call made now may wait: `timeout`, and never past the deadline of the request being served."""
    deadline = call_deadline(timeout)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def iterate_on(gen: Any, executor: Any, timeout: float | None = None,
                     timed_out: Callable[[], BaseException] | None = None) -> AsyncGenerator[Any, None]:
    """A sync generator's items from async code: each `next()` (and the final close) on `executor`,
    since producing an item may block. `timeout` bounds each `next()`; `timed_out()` is raised then."""
    loop = asyncio.get_running_loop()
    stuck = False
    try:
        while True:
            fut = loop.run_in_executor(executor, next, gen, _END)
            try:
                item = await asyncio.wait_for(fut, wait_s(timeout))
            except asyncio.TimeoutError:
                stuck = True
                raise (timed_out() if timed_out is not None else RunnerTimeout("no item within the timeout")) from None
            if item is _END:
                return
            yield item
    finally:
        if stuck:  # next() still runs on the executor: close after it, without waiting for it
            try:
                executor.submit(_quietly, gen.close)
            except RuntimeError:
                pass  # the executor was shut down, with the generator's thread
        else:
            await loop.run_in_executor(executor, gen.close)


def _sync_items(pool: ThreadPoolExecutor, step: Callable[[], Any], close: Callable[[], None], timeout: float | None,
                timed_out: Callable[[], BaseException]) -> Iterator[Any]:
    """Items from `step()` run on `pool` (`_END` ends them), each waited for at most `timeout`; then `close()`."""
    stuck = False
    try:
        while True:
            fut = pool.submit(step)
            try:
                item = fut.result(wait_s(timeout))
            except concurrent.futures.TimeoutError:
                stuck = True
                raise timed_out() from None
            if item is _END:
                return
            yield item
    finally:
        try:
            done = pool.submit(_quietly, close)
        except RuntimeError:
            pass  # the backend was closed: its thread is gone, with the generator
        else:
            if not stuck:
                done.result()


def _anext_on(loop: asyncio.AbstractEventLoop, agen: Any) -> Any:
    try:
        return loop.run_until_complete(agen.__anext__())
    except StopAsyncIteration:
        return _END


def _aclose_on(loop: asyncio.AbstractEventLoop, agen: Any) -> None:
    try:
        loop.run_until_complete(agen.aclose())
    finally:
        loop.close()


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:
        pass  # the generator failed while closing: its consumer already has its outcome
