"""``ModelStreamInfer``: many inferences over one bidirectional stream.

Each ``ModelInferRequest`` read from the stream runs as ModelInfer would, as
its own task, so a slow request does not hold back those behind it (their
calls may join the same batches); each answer is written as soon as it is
ready, so answers can come back in another order than the requests: a client
matches them by the request ``id`` (tritonclient's stream callback gets the
result, whose ``id`` is the request's). A request that fails does not end the
stream: its answer carries ``error_message`` (prefixed with the request id,
which is all tritonclient's callback shows of a failed request) and an
``infer_response`` with the id and model name. At most `MAX_IN_FLIGHT`
requests of one stream run at once; beyond that the stream is not read until
one finishes (gRPC flow control then holds the client back). The stream ends
when the client closes its side and every request has been answered, or, once
the server is stopping (`stopping` is set), as soon as the requests already
read are answered: a client that keeps an idle stream open does not hold the
graceful shutdown for its whole grace period, and its stream ends with OK
rather than being cancelled.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from ...oip.errors import InferError, status_of

__all__ = ["serve_stream", "MAX_IN_FLIGHT"]

log = logging.getLogger("shmserve.grpc")

#: requests of one stream running at once
MAX_IN_FLIGHT = 64
_END = object()


def error_response(request: Any, exc: BaseException) -> Any:
    """The stream's answer to a request that failed with `exc`."""
    err = status_of(exc)
    if not isinstance(exc, InferError):
        log.exception("gRPC ModelStreamInfer request failed", exc_info=exc)
    message = f"request {request.id!r}: {err.message}" if request.id else err.message
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                             id=request.id))


async def serve_stream(requests: AsyncIterator[Any], infer: Callable[[Any], Awaitable[Any]],
                       stopping: asyncio.Event | None = None) -> AsyncIterator[Any]:
    """Answer every request of `requests` with ``infer(request)``; see the module docstring."""
    answers: asyncio.Queue[Any] = asyncio.Queue()
    room = asyncio.Semaphore(MAX_IN_FLIGHT)
    running: set[asyncio.Task[None]] = set()

    async def one(request: Any) -> None:
        try:
            answer = pb.ModelStreamInferResponse(infer_response=await infer(request))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = error_response(request, exc)
        finally:
            room.release()
        answers.put_nowait(answer)

    async def read() -> None:
        try:
            async for request in requests:
                await room.acquire()
                task = asyncio.ensure_future(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
        except asyncio.CancelledError:
            raise  # by drain(), which ends the stream once the running requests are answered
        except BaseException:
            answers.put_nowait(_END)
            raise
        answers.put_nowait(_END)

    async def drain() -> None:
        assert stopping is not None
        await stopping.wait()
        reader.cancel()  # no more requests are read; those running are answered
        while running:
            await asyncio.wait(set(running))
        answers.put_nowait(_END)

    reader = asyncio.ensure_future(read())
    drainer = asyncio.ensure_future(drain()) if stopping is not None else None
    try:
        while (answer := await answers.get()) is not _END:
            yield answer
        if drainer is None or not drainer.done():
            await reader  # the client's side failed: raise what the reader saw
    finally:
        for task in (reader, *running, *([drainer] if drainer is not None else [])):
            task.cancel()
