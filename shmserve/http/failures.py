"""How an API request that failed is answered and counted: its status, its error body, its metric.

`App` calls these off its happy path: a body its input descriptor refused
(`decode_failed`), an API call that raised (`call_failed`), or any other failure
with a known status (`reply_failure`). Each counts the response in the request
histograms under its status, then replies with shmserve's error body.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ..errors import RunnerError, ShmserveError
from ..service import API
from .endpoints import RETRY_AFTER
from .metrics import Metrics
from .protocol import HttpProtocol, Request

__all__ = ["reply_failure", "decode_failed", "call_failed"]

log = logging.getLogger("shmserve.http")


def reply_failure(metrics: Metrics, conn: HttpProtocol, api: API, start: float, status: int,
                  exc: BaseException) -> None:
    """Count `api`'s response with `status` (dispatched at `start`) and reply with `exc` as its error."""
    metrics.observe_request(api.name, status, time.perf_counter() - start)
    # RunnerError's str() carries the remote traceback: log it, do not send it.
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    conn.reply_error(status, type(exc).__name__, message or type(exc).__name__,
                     RETRY_AFTER if status == 503 else b"")


def decode_failed(metrics: Metrics, conn: HttpProtocol, api: API, start: float, exc: Exception) -> None:
    """`api`'s input descriptor refused the body: its `ShmserveError` status, else 500 (and logged)."""
    if isinstance(exc, ShmserveError):
        reply_failure(metrics, conn, api, start, exc.http_status, exc)
        return
    # A custom descriptor's bug: the request is lost, not the worker.
    log.exception("input descriptor of API %r failed", api.name, exc_info=exc)
    reply_failure(metrics, conn, api, start, 500, exc)


def call_failed(metrics: Metrics, conn: HttpProtocol, api: API, request: Request, start: float,
                exc: Exception) -> None:
    """`api` raised `exc`: a `ShmserveError` has its status, a timeout 504, anything else 500 (logged)."""
    if isinstance(exc, ShmserveError):
        if isinstance(exc, RunnerError):
            log.warning("API %r (request %s): runner error: %s", api.name, request.request_id.decode(), exc)
        reply_failure(metrics, conn, api, start, exc.http_status, exc)
    elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        reply_failure(metrics, conn, api, start, 504,
                      TimeoutError(f"API {api.name!r} did not finish within {api.timeout} s"))
    else:
        log.exception("API %r raised (request %s)", api.name, request.request_id.decode(), exc_info=exc)
        reply_failure(metrics, conn, api, start, 500, exc)
