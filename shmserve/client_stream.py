"""Streaming calls of the shared-memory client: a generator method's items, as they arrive.

The worker answers a streaming call with one ``ST_ITEM`` response per item and a
final response (`shmserve.shm.wire`). The link hands each item to the call's
*sink* (``Pending.stream``) as it collects it (`shmserve.link`): for
`async_stream` a queue fed on the consumer's loop with
``loop.call_soon_threadsafe``, for `stream` a thread-safe queue. The final
response takes the same path (`shmserve.delivery.Delivery.deliver`), so it
never overtakes an item. A consumer that leaves early marks the call's cancel
word (`RunnerClient.cancel`); the worker reads it before the next item and
closes the generator.
"""
from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from .deadline import call_deadline
from .delivery import Delivery
from .errors import RunnerTimeout
from .link import Pending

Entry = tuple[Any, "BaseException | None", bool]  # (item, error, ended)


class RunnerClient(Protocol):
    """What streaming needs of `shmserve.client.RunnerClient` (named here, not imported: no cycle)."""

    name: str
    default_timeout: float | None
    _delivery: Delivery

    def _serve_loop(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float | None,
                block_for_space: bool = True, stream: Any = None) -> Pending: ...
    def cancel(self, p: Pending) -> None: ...


class StreamingCalls:
    """The streaming half of `shmserve.client.RunnerClient`."""

    async def async_stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                           timeout: float | None) -> AsyncGenerator[Any, None]:
        """The items of a generator method as the worker produces them.

        Leaving the iteration early (break, an exception, a cancelled task) tells the
        worker to stop the generator. `timeout` (default: the runner's) bounds the wait
        for each item, and no wait outlasts the deadline of the request being served.
        """
        client: RunnerClient = self  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        client._serve_loop(loop)
        items: asyncio.Queue[Entry] = asyncio.Queue()
        p = client._submit(method, args, kwargs, call_deadline(timeout, client.default_timeout), block_for_space=False,
                           stream=_loop_sink(loop, items))
        try:
            while True:
                try:
                    item, error, ended = await asyncio.wait_for(items.get(), _wait_s(client, timeout))
                except asyncio.TimeoutError:
                    raise _no_item(client, method, timeout) from None
                if error is not None:
                    raise error
                if ended:
                    return
                yield item
        finally:
            if not p.done:
                client.cancel(p)
            # error -> traceback -> this frame -> p/error -> error: a cycle only the garbage collector
            # frees, holding the consumer's frames and the leased items in them (the result arena fills).
            del p
            error = None

    def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               timeout: float | None) -> SyncStream:
        """`async_stream` for synchronous code: a generator of the items as they arrive.

        The call is sent at once (not at the first ``next()``), so a bad call fails here.
        Closing the generator early (``break``, ``close()``, garbage collection) stops the
        worker's generator.
        """
        client: RunnerClient = self  # type: ignore[assignment]
        client._delivery.ensure_thread()  # the completion thread reads the responses; this thread only waits
        items: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        p = client._submit(method, args, kwargs, call_deadline(timeout, client.default_timeout), stream=items.put)
        return SyncStream(client, p, items, method, timeout)


class SyncStream:
    """The items of a streaming call for synchronous code (what `StreamingCalls.stream` returns).

    Iterate it; `close()` (also on garbage collection, or leaving a ``with`` block)
    stops the worker's generator when the items are not all taken.
    """

    def __init__(self, client: RunnerClient, p: Pending, items: queue.SimpleQueue[Entry], method: str,
                 timeout: float | None) -> None:
        self._client, self._p, self._items, self._method, self._timeout = client, p, items, method, timeout
        self._ended = False

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        if self._ended:
            raise StopIteration
        try:
            item, error, ended = self._items.get(timeout=_wait_s(self._client, self._timeout))
        except queue.Empty:
            self.close()
            raise _no_item(self._client, self._method, self._timeout) from None
        if error is not None or ended:
            self._ended = True
            if error is not None:
                try:
                    raise error
                finally:
                    error = None  # no cycle through this frame (see async_stream)
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the call if it is still producing; further `next()` ends the iteration."""
        self._ended = True
        if not self._p.done:
            self._client.cancel(self._p)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        p = self._p
        if not p.done:
            # A finalizer may run while this thread holds the client's lock, so not `cancel()`: the
            # word is written unlocked, which is safe because it names the call (a stale mark matches nothing).
            p.abandoned = True
            try:
                p.link.cancel(p)
            except Exception:
                pass  # the link closed meanwhile: the call is gone with it


def _loop_sink(loop: asyncio.AbstractEventLoop, items: asyncio.Queue[Entry]) -> Callable[[Entry], None]:
    """A sink that queues entries for a consumer on `loop`, from any thread."""
    def put(entry: Entry) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, entry)
        except RuntimeError:
            pass  # that loop is closed: nobody consumes the stream any more
    return put


def _wait_s(client: RunnerClient, timeout: float | None) -> float | None:
    """How long to wait for the next item: `timeout` (or the runner's), never past the request's deadline."""
    deadline = call_deadline(timeout, client.default_timeout)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _no_item(client: RunnerClient, method: str, timeout: float | None) -> RunnerTimeout:
    limit = client.default_timeout if timeout is None else timeout
    return RunnerTimeout(f"no item of {client.name}.{method} within its timeout"
                         + (f" ({limit} s)" if limit is not None else " (the request's deadline passed)"))
