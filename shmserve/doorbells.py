"""One doorbell post per event-loop turn for the calls a loop makes while others are in flight.

An event loop makes its calls a turn at a time (the requests one read of the
sockets brought): `Doorbells.later` puts off the worker's doorbell post of
such a call to the end of the turn, so that one post wakes the worker once,
with every call of the turn in its ring, where a post per call cost a
semaphore operation each, and a futex wake-up each while the worker sleeps.
The post waits for the callbacks already queued on the loop, not for I/O (one
``loop.call_soon``): the loop's next pass, microseconds later. The client puts
off only calls made while others are in flight; a lone caller's call is posted
at once (waiting for the next pass cost it ~9% more instructions per call).
While one loop's posts are pending, calls from other loops post at once.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["Doorbells"]


class Doorbells:
    """The links whose calls were published without a post, and the loop that will post them.

    `later` is called under the client's `lock` (the one every link is used under); the post takes it.
    """

    __slots__ = ("lock", "links", "loop")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.links: list[Any] = []  # `shmserve.pool.Link`s with calls published but not yet posted
        self.loop: asyncio.AbstractEventLoop | None = None

    def later(self, loop: asyncio.AbstractEventLoop, link: Any) -> None:
        """Have `link`'s doorbell posted when `loop`'s current turn ends (called under the lock)."""
        owner = self.loop
        if owner is None:
            self.loop = loop
            loop.call_soon(self.post)
        elif owner is not loop:
            if not owner.is_closed():
                link.ring()
                return
            self.links.append(link)  # that loop closed before its turn ended: post its calls now
            self.post_locked()
            return
        if link not in self.links:
            self.links.append(link)

    def post(self) -> None:
        """Post the doorbells `later` put off (on their loop, after the turn's callbacks)."""
        with self.lock:
            self.post_locked()

    def post_locked(self) -> None:
        links, self.links, self.loop = self.links, [], None
        for link in links:
            if link.live:
                link.ring()
