"""When a runner call is due: its timeout, the runner's default, and the deadline of the request it serves.

Both backends use it: the shared-memory client (`shmserve.client`) and the
in-process one (`shmserve.local`), so a call bounds the same way wherever the
runner runs.
"""
from __future__ import annotations

import time
from contextvars import ContextVar

__all__ = ["request_deadline", "call_deadline"]

#: The deadline (CLOCK_MONOTONIC seconds) of the request being served in this context, if any: an
#: API with a ``timeout`` sets it (`shmserve.http.app`), and every runner call made for the request
#: is then due by it, whatever its own timeout.
request_deadline: ContextVar[float | None] = ContextVar("shmserve_request_deadline", default=None)


def call_deadline(timeout: float | None, default: float | None = None) -> float | None:
    """When a call made now is due: `timeout`, else `default`, and never past the request's deadline."""
    if timeout is None:
        timeout = default
    deadline = time.monotonic() + timeout if timeout is not None else None
    scope = request_deadline.get()
    if scope is not None and (deadline is None or scope < deadline):
        deadline = scope
    return deadline
