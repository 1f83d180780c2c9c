"""Wake-ups between a client and a worker: none lost, none doubled.

The client posts a worker's doorbell once per call; the worker wakes the client once per flush
(its reply semaphore and its loop's eventfd), however many results the flush covers. Both ends
run here in one process on one channel in memory, with fake semaphores that count their posts:
no process, no shared memory.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np

from shmserve.client import RunnerClient
from shmserve.link import WorkerLink
from shmserve.shm import ring
from shmserve.shm.ring import ChannelLayout
from shmserve.worker.channel import WorkerChannel

ARENA = 1 << 16


class FakeSignal:
    """Counts posts; what `Signal` offers the two ends here."""

    def __init__(self) -> None:
        self.posts = 0
        self.name = "fake"

    def post(self) -> None:
        self.posts += 1

    def try_post(self) -> bool:
        self.posts += 1
        return True

    def close(self) -> None:
        pass


class MemorySegment:
    """A channel segment in process memory (both ends map the same bytes)."""

    def __init__(self, layout: ChannelLayout) -> None:
        self.buf = bytearray(layout.total)
        self.size = layout.total
        self.name = "memory"

    def close(self) -> None:
        pass


class Pair:
    """One client (its one link) and the worker's channel, on one segment in memory."""

    def __init__(self) -> None:
        layout = ChannelLayout(16, ARENA, ARENA)
        seg = MemorySegment(layout)
        layout.write_header(memoryview(seg.buf))
        self.doorbell, self.reply = FakeSignal(), FakeSignal()
        doorbell = self.doorbell

        class MemoryLink(WorkerLink):
            """A link whose channel is `seg`, attached without a handshake."""

            def connect(self, slots: int, arena_bytes: int, reply: Any, loop_wake: int | None,
                        timeout: float = 10.0) -> None:
                self.adopt(None, seg, layout, doorbell, {"pid": 0, "methods": {"echo": {"index": 0}}}, None)

        record = {"arena_mb": 1, "max_queue_size": 16, "timeout": None, "lease": "",
                  "workers": [{"index": 0, "socket": "", "health": None}]}
        client = RunnerClient("t", record=record, transport=lambda runner, w: MemoryLink(runner, 0, ""))
        client.arena_bytes = ARENA
        self.client, self.link = client, client.links[0]
        self.sock_a, self.sock_b = socket.socketpair()
        self.worker = WorkerChannel(seg, self.sock_b, self.reply)  # type: ignore[arg-type]

    def submit(self) -> Any:
        return self.client._submit("echo", (np.ones(4, np.float32),), {}, None, block_for_space=False)

    def serve(self) -> int:
        """The worker reads what arrived, answers each call, and flushes once; returns the calls read."""
        reqs = self.worker.read_new(0.0)
        for r in reqs:
            self.worker.write_result(r, ring.ST_OK, [], b"", (0.0, 0.0, 0.0, 0.0), len(reqs))
        self.worker.flush()
        return len(reqs)

    def read(self) -> list[Any]:
        done: list[Any] = []
        with self.client._lock:
            self.link.collect(self.client._decode, done)
        return [p for p, _result, _error in done]

    def close(self) -> None:
        self.client.close()
        self.worker.close()
        self.sock_a.close()


def test_a_call_posts_the_doorbell_at_once() -> None:
    pair = Pair()
    try:
        pair.submit()
        assert pair.doorbell.posts == 1
    finally:
        pair.close()


def test_each_flush_with_results_signals_the_semaphore_and_the_loop_eventfd_once() -> None:
    pair = Pair()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    pair.worker.set_loop_wake(os.dup(efd))
    try:
        for _ in range(3):
            pair.submit()
        assert pair.doorbell.posts == 3  # one post per call
        assert pair.serve() == 3  # three results, one flush
        assert pair.reply.posts == 1 and os.eventfd_read(efd) == 1
        pair.worker.flush()  # nothing new since: nothing signalled
        assert pair.reply.posts == 1
        assert len(pair.read()) == 3
    finally:
        os.close(efd)
        pair.close()


def test_without_the_loop_eventfd_every_flush_posts_the_semaphore() -> None:
    pair = Pair()
    try:
        pair.submit()
        assert pair.serve() == 1 and pair.reply.posts == 1
        pair.worker.flush()  # nothing new since: no post
        assert pair.reply.posts == 1
    finally:
        pair.close()
