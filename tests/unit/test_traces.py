"""Per-call traces: process-wide hooks and a per-context list (no processes)."""
from __future__ import annotations

import contextvars

from shmserve import traces

TRACE = {"submit": 1.0, "complete": 2.0, "batch_size": 1}


def test_nobody_listens_by_default():
    assert not traces.wanted(None)
    traces.deliver("r", "m", TRACE, None)  # a no-op, not an error


def test_hooks_see_every_call_and_a_failing_hook_does_not_stop_the_others():
    seen = []

    def broken(runner, method, trace):
        raise RuntimeError("a hook bug")

    def keep(runner, method, trace):
        seen.append((runner, method, trace["complete"]))

    traces.add_trace_hook(broken)
    traces.add_trace_hook(keep)
    try:
        assert traces.wanted(None)
        traces.deliver("mlp", "predict", TRACE, None)
    finally:
        traces.remove_trace_hook(broken)
        traces.remove_trace_hook(keep)
    assert seen == [("mlp", "predict", 2.0)]
    assert not traces.wanted(None)
    traces.remove_trace_hook(keep)  # removing twice is harmless


def test_a_context_collects_only_its_own_calls():
    def one_request(name):
        traces.call_traces.set([])
        sink = traces.call_traces.get()
        assert traces.wanted(sink)
        traces.deliver("mlp", name, TRACE, sink)
        return traces.call_traces.get()

    a = contextvars.copy_context().run(one_request, "a")
    b = contextvars.copy_context().run(one_request, "b")
    assert [m for _, m, _ in a] == ["a"] and [m for _, m, _ in b] == ["b"]
    assert traces.call_traces.get() is None  # the caller's context is untouched


def test_the_client_module_still_exports_the_hooks():
    from shmserve import client

    assert client.add_trace_hook is traces.add_trace_hook
    assert client.call_traces is traces.call_traces


def test_a_hook_that_removes_itself_while_called_does_not_skip_the_next():
    seen = []

    def once(runner, method, trace):
        traces.remove_trace_hook(once)
        seen.append("once")

    def keep(runner, method, trace):
        seen.append("keep")

    traces.add_trace_hook(once)
    traces.add_trace_hook(keep)
    try:
        traces.deliver("r", "m", TRACE, None)
        traces.deliver("r", "m", TRACE, None)
    finally:
        traces.remove_trace_hook(keep)
    assert seen == ["once", "keep", "keep"] and not traces.wanted(None)
