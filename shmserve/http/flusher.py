"""The writer thread of the access log and of the span exporter.

The event loop only appends to a deque; a `FlushThread` wakes every period
(`FLUSH_S`, 0.1 s) and calls its `flush`, so formatting, writing and span
building never run on the loop. `stop()` wakes it at once instead of letting it
finish its sleep.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["FLUSH_S", "FlushThread"]

#: how often the writer wakes: an access line or a span is at most this late
FLUSH_S = 0.1

log = logging.getLogger("shmserve.http")


class FlushThread:
    """A daemon thread calling `flush` every `period_s` until `stop()`; a failing flush is logged, not fatal."""

    def __init__(self, flush: Callable[[], None], name: str, what: str, period_s: float = FLUSH_S) -> None:
        self._flush = flush
        self.name = name
        self._what = what  # for the log line of a failed flush: "writing access log lines"
        self._period = period_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (again, after a stop); a no-op while it runs."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Wake the thread and wait up to `timeout` for it to end (the owner flushes what is left)."""
        thread = self._thread
        if thread is not None:
            self._stopping.set()
            thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self._period):
            try:
                self._flush()
            except Exception:  # a broken formatter or handler must not end the log for good
                log.exception("%s failed", self._what)
