"""`start`: run one request's coroutine as the connection's task, the cheapest way this Python allows.

An API or v2 request's coroutine runs in a RequestTask of shmserve/_native/task.c
when it is built: its first step at once, no asyncio.Task made. Without it, the
task is made here, not by loop.create_task: on Python 3.11 a task given no name
formats "Task-<n>" in its __init__ (a fifth of making it), and uvloop's
create_task is one more call around it.

A RequestTask makes itself asyncio.current_task() through asyncio's
_current_tasks dict, which Python 3.14 gave up (the current task lives in the
thread state there): from 3.14 on, asyncio.Task.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from .. import _native
from .protocol import HttpProtocol

__all__ = ["start", "start_task", "native_task", "Task", "TASK_NAME"]

native_task = _native.load("task")
#: ``start_task(coro, loop, conn)``: the C start, or None where it is not built or not usable
start_task = None if native_task is None or sys.version_info >= (3, 14) else native_task.start_task
Task = asyncio.Task
TASK_NAME = "shmserve-request"


def start(coro: Any, loop: asyncio.AbstractEventLoop, conn: HttpProtocol) -> None:
    """Run the request's coroutine `coro` as ``conn.task`` (so a disconnect cancels it): a RequestTask
    (shmserve/_native/task.c: its first step now, no asyncio.Task made; it is asyncio.current_task() while
    it runs and offers what asyncio.timeout and TaskGroup ask of it), or an asyncio.Task."""
    if start_task is not None:
        start_task(coro, loop, conn)
    else:
        conn.task = Task(coro, loop=loop, name=TASK_NAME)
