"""In-process backend: `runner.init_local()` and embedded runners (no processes, no shared memory)."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .errors import ConfigError, RunnerTimeout


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


class LocalBackend:
    """Calls the Runnable's methods directly in the calling process.

    Async calls run on one thread of this backend's own, so that a slow method
    never blocks the event loop, and calls reach the instance one at a time,
    as they would in a worker process.
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

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        return self._method(method)(*args, **kwargs)

    async def async_call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        func = self._method(method)
        fut = asyncio.get_running_loop().run_in_executor(self._pool(), lambda: func(*args, **kwargs))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RunnerTimeout(f"call to {self.runner.name}.{method} timed out after {timeout} s") from None

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
