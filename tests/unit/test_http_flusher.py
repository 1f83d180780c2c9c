"""The writer thread shared by the access log and the span exporter."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from shmserve.http.flusher import FlushThread


def test_flushes_every_period_and_a_failing_flush_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    twice = threading.Event()

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broken handler")
        twice.set()

    writer = FlushThread(flush, "test-writer", "writing test lines", period_s=0.01)
    with caplog.at_level(logging.ERROR, logger="shmserve.http"):
        writer.start()
        try:
            assert twice.wait(10.0), "the thread stopped after a failing flush"
        finally:
            writer.stop()
    assert any("writing test lines failed" in r.getMessage() for r in caplog.records)
    assert not writer.running


def test_stop_wakes_the_thread_instead_of_waiting_out_its_period() -> None:
    writer = FlushThread(lambda: None, "test-writer", "writing test lines", period_s=60.0)
    writer.start()
    begin = time.monotonic()
    writer.stop(timeout=30.0)
    assert time.monotonic() - begin < 20.0  # joined by the wake-up, not by the 30 s timeout or the 60 s period
    assert not writer.running
    writer.start()  # and it starts again after a stop
    assert writer.running
    writer.stop()
