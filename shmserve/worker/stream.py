"""Serving one call of a generator method: each item goes back as it is produced.

A streaming call runs alone (generator methods are never batchable). Every item
is written to the client as an ``ST_ITEM`` response and published at once; the
call ends with an ``ST_OK`` response holding None, or an error status. Before
each item the worker checks whether the client gave up on the call (the cancel
word of its request descriptor, set when the consumer stops iterating) or went
away, and then closes the generator, so its ``finally`` blocks run. The dispatch
loop serves nothing else while a generator runs; the health board counts each
item produced as progress, so a long stream is not taken for a hung worker.
"""
from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Iterator
from typing import Any

import orjson

from ..shm import ring
from ..shm.health import HealthBoard
from ..shm.message import DeviceGetter, encode_result
from .call_log import log_failure
from .channel import Request


def stream_items(gen: Any, req: Request, device: DeviceGetter, times: tuple[float, float, float],
                 board: HealthBoard | None = None, method: str = "?") -> None:
    """Send the items of `gen` (a generator or async generator) for `req` of `method`, then its end."""
    ch = req.channel
    loop = asyncio.new_event_loop() if inspect.isasyncgen(gen) else None
    items = _drive(gen, loop) if loop is not None else iter(gen)
    tensors, meta = encode_result(None)
    code: int = ring.ST_OK
    beat = (lambda: board.beat(time.monotonic())) if board is not None else None
    try:
        while True:
            if board is not None:
                board.begin(time.monotonic(), 0.0)  # producing the next item
            try:
                item = next(items)
            except StopIteration:
                break
            finally:
                if board is not None:
                    board.end(time.monotonic())
            if not ch.wait_response_slot(req, beat=beat):
                break  # the client gave up on the call, or is gone
            item_tensors, item_meta = encode_result(item, "streamed item", device=device)
            written = ch.write_result(req, ring.ST_ITEM, item_tensors, item_meta, (*times, time.monotonic()), 1)
            ch.flush()
            if written != ring.ST_ITEM:  # the item did not fit: that error response ended the call
                code = written
                break
    except Exception as exc:
        code, tensors = ring.ST_MODEL_ERROR, []
        meta = orjson.dumps({"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
        log_failure(req, method, code, type(exc).__name__, str(exc))  # as a failed batch call is, before the answer
    finally:
        _close(gen, loop)
    if code != ring.ST_TOO_LARGE and ch.wait_response_slot(req, final=True, beat=beat):
        ch.write_result(req, code, tensors, meta, (*times, time.monotonic()), 1)


def _drive(agen: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """An async generator's items, one `run_until_complete` each."""
    while True:
        try:
            yield loop.run_until_complete(agen.__anext__())
        except StopAsyncIteration:
            return


def _close(gen: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close the generator early (its finally blocks run) and the private loop of an async one."""
    try:
        if loop is None:
            gen.close()
        else:
            loop.run_until_complete(gen.aclose())
    except Exception:
        pass  # the generator failed while closing: the call already has its outcome
    finally:
        if loop is not None:
            loop.close()
