"""The handles a bound `Runner` is called through: ``runner.<method>.run(...)`` and friends.

`RunnerMethod` is one method of a runner (`run`, `async_run`, `stream`,
`async_stream`); `MethodConfig` its batching settings; `Backend` what a bound
runner calls into (`shmserve.local.LocalBackend` in this process, or the
shared-memory `shmserve.client.RunnerClient`). `shmserve.runner` re-exports
all three.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import BlockingCall, ConfigError
from .local import LocalBackend
from .runnable import MethodSignature, Runnable

# The loop running on this thread, or None; unlike get_running_loop() it does not raise
# (a raise on every sync call would cost more than the check).
_running_loop = asyncio._get_running_loop


class BoundRunner(Protocol):
    """What a method handle needs of its `shmserve.runner.Runner` (named here, not imported: no cycle)."""

    name: str
    timeout: float | None
    runnable_class: type[Runnable]

    def _backend_or_raise(self) -> "Backend": ...


@dataclass(frozen=True)
class MethodConfig:
    """Per-method settings: the batching limits of one runner method."""

    signature: MethodSignature
    max_batch_size: int
    max_latency_ms: float

    @property
    def name(self) -> str:
        return self.signature.name


class Backend(Protocol):
    """What a bound runner calls into (local Runnable or shared-memory client)."""

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any: ...

    async def async_call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any: ...

    def async_stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> AsyncGenerator[Any, None]: ...

    def stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Iterator[Any]: ...

    def close(self) -> None: ...


class RunnerMethod:
    """`runner.<method>`: call with `.run(...)` or `await .async_run(...)`.

    Calling the handle itself is `.run(...)`: that is what ``runner.run(x)``
    does when the Runnable's method is named ``run`` (the ONNX adapter's).
    """

    def __init__(self, runner: BoundRunner, config: MethodConfig) -> None:
        self.runner = runner
        self.config = config
        self.name = config.name
        prepare = getattr(runner.runnable_class, "prepare_call", None)
        # Looked up once: most Runnables keep the default, and their calls skip it.
        default = getattr(prepare, "__func__", None) is Runnable.prepare_call.__func__  # type: ignore[attr-defined]
        self._prepare = None if prepare is None or default else prepare

    def _args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (args, kwargs) if self._prepare is None else self._prepare(self.name, args, kwargs)

    def __call__(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self.run(*args, timeout=timeout, **kwargs)

    def run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call the method and wait for its result. `timeout` (seconds) defaults to the runner's.

        Raises `BlockingCall` on a thread running an event loop (an ``async def``
        API) when the runner is served by worker processes: waiting there would
        stall every other request of the loop. In-process runners (`init_local`,
        ``embedded=True``) are let through: their wait is the method's own run,
        as a plain call would be.
        """
        self._not_streaming()
        timeout = self.runner.timeout if timeout is None else timeout
        backend = self._not_blocking("run", "async_run")
        args, kwargs = self._args(args, kwargs)
        return backend.call(self.name, args, kwargs, timeout)

    def _not_blocking(self, sync: str, use: str) -> Backend:
        """The backend, unless a sync call would block a running event loop on worker processes."""
        backend = self.runner._backend_or_raise()
        if _running_loop() is not None and not isinstance(backend, LocalBackend):
            call = "runner" if self.name == "__call__" else f"runner.{self.name}"
            raise BlockingCall(
                f"{call}.{sync}() of runner {self.runner.name!r} was called inside a running event loop "
                f"(an async API or coroutine), where it would block every other request until its result came: "
                f"use `{'await ' if use == 'async_run' else 'async for item in '}{call}.{use}(...)` there, or make "
                "the API a plain `def` (those run on a thread)"
            )
        return backend

    def async_run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call the method from async code (``await runner.<method>.async_run(x)``); the event loop is
        never blocked.

        Returns the backend's coroutine itself rather than a coroutine awaiting it: one frame less on
        every call's way in and out. A streaming method or an unbound runner raises here, when called.
        """
        self._not_streaming()
        timeout = self.runner.timeout if timeout is None else timeout
        args, kwargs = self._args(args, kwargs)
        return self.runner._backend_or_raise().async_call(self.name, args, kwargs, timeout)

    async def async_stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Call a generator method: ``async for item in runner.generate.async_stream(prompt): ...``.

        Items arrive as the method yields them. Leaving the loop early (break, an error,
        a cancelled task) stops the generator in the worker. `timeout` bounds the wait
        for each item (default: the runner's).
        """
        self._streaming()
        timeout = self.runner.timeout if timeout is None else timeout
        args, kwargs = self._args(args, kwargs)
        stream = self.runner._backend_or_raise().async_stream(self.name, args, kwargs, timeout)
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    def stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """`async_stream` for synchronous code: ``for item in runner.generate.stream(prompt): ...``.

        The call is sent at once. Leaving the loop early (or closing the iterator) stops
        the generator in the worker. `timeout` bounds the wait for each item.
        """
        self._streaming()
        timeout = self.runner.timeout if timeout is None else timeout
        backend = self._not_blocking("stream", "async_stream")
        args, kwargs = self._args(args, kwargs)
        return backend.stream(self.name, args, kwargs, timeout)

    def _streaming(self) -> None:
        if not self.config.signature.stream:
            raise ConfigError(f"{self.runner.name}.{self.name} is not a generator method; call it with "
                              f"run() / async_run()")

    def _not_streaming(self) -> None:
        if self.config.signature.stream:
            raise ConfigError(f"{self.runner.name}.{self.name} is a generator method: iterate "
                              f"`runner.{self.name}.stream(...)`, or `runner.{self.name}.async_stream(...)` "
                              "with `async for`")

    def __repr__(self) -> str:
        return f"<RunnerMethod {self.runner.name}.{self.name} batchable={self.config.signature.batchable}>"
