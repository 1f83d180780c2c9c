"""Timelines of runner calls, for whoever asks: process-wide hooks and a per-context list.

A trace holds CLOCK_MONOTONIC times along one call's path: submit, dequeue,
batch_start, model_start, model_end, written, complete, and batch_size. The
HTTP metrics feed on the hooks; one HTTP request that asks for its own
timeline (header ``X-Shmserve-Trace``) reads `call_traces`.
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

TraceHook = Callable[[str, str, dict[str, float]], None]
Sink = list[tuple[str, str, dict[str, float]]]
_trace_hooks: list[TraceHook] = []
#: the hooks as `deliver` walks them: a tuple made when one is added or removed, not a copy per call
#: (a hook may remove itself while it is called)
_hooks: tuple[TraceHook, ...] = ()
_failed_hooks: set[int] = set()  # ids of hooks whose failure was logged
log = logging.getLogger("shmserve")

#: While set (to a list), every runner call made in this context appends
#: ``(runner, method, trace)`` to it: how one HTTP request learns its own
#: runner timestamps (see `shmserve.http.app`, header ``X-Shmserve-Trace``).
call_traces: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("shmserve_call_traces", default=None)

#: The ID of the HTTP request this context serves (set by `shmserve.http.app`; empty outside one):
#: every runner call made in it carries the ID to the runner worker (the descriptor's
#: ``request_tag``), whose log lines about the call then name ``request_id=...``.
call_request_id: contextvars.ContextVar[bytes] = contextvars.ContextVar("shmserve_call_request_id", default=b"")
#: Whether runner calls look `call_request_id` up: true once the process serves HTTP (set when
#: `shmserve.http.app` is imported), so calls made outside an HTTP server skip the lookup (hot path).
tagging = False


def add_trace_hook(fn: TraceHook) -> None:
    """Call `fn(runner, method, trace)` for every completed call in this process.

    `trace` holds CLOCK_MONOTONIC times: submit, dequeue, batch_start,
    model_start, model_end, written, complete, and batch_size.
    """
    global _hooks
    _trace_hooks.append(fn)
    _hooks = tuple(_trace_hooks)


def remove_trace_hook(fn: TraceHook) -> None:
    """Stop calling a hook added with `add_trace_hook`."""
    global _hooks
    if fn in _trace_hooks:
        _trace_hooks.remove(fn)
        _hooks = tuple(_trace_hooks)


def wanted(sink: Sink | None) -> bool:
    """Whether anyone listens for the trace of a call made with `sink` (cheap: checked per call)."""
    return sink is not None or bool(_hooks)


def deliver(runner: str, method: str, trace: dict[str, float], sink: Sink | None) -> None:
    """Hand one call's trace to its context's list and to every hook (a failing hook is logged once, and skipped over)."""
    if sink is not None:
        sink.append((runner, method, trace))
    for hook in _hooks:
        try:
            hook(runner, method, trace)
        except Exception:  # a hook's bug must not fail the call it observes; said once per hook, not per call
            if id(hook) not in _failed_hooks:
                _failed_hooks.add(id(hook))
                log.exception("trace hook %r raised; its later failures are not logged", hook)
