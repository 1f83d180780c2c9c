"""The cyclic garbage collector in a serving process: the start-up heap frozen, full collections held off
while a large body is decoded.

A full collection walks every container object of the process. An API worker's
start-up heap (the service, numpy, pydantic, uvloop: about 50,000 containers)
never becomes garbage, yet at 128 connections a full collection walked it about
twice a second, 9-35 ms each time: the p99 of JSON requests (#13).
`freeze_startup` moves that heap out of the collector's generations once,
before serving (`gc.freeze`); a full collection then walks only what the
requests in flight allocated.

A large JSON body decoded a piece at a time (`shmserve.jsonvalue`) builds row
lists that live until its request ends. Left to the collector, each young pass
walks every row still young and, about every ten middle passes, a full one
walks every row parsed so far. `PieceDecode` instead settles each piece's rows
into the oldest generation when the piece is done (one walk of one piece) and
holds full collections off while any such decode runs (for a second at most:
decodes that overlap without end must not keep cyclic garbage of the oldest
generation forever; then one full collection runs). It does not use
``gc.freeze`` for that: ``gc.unfreeze`` gives back everything frozen, the
start-up heap with it.
"""
from __future__ import annotations

import gc
import threading
import time
from types import TracebackType

__all__ = ["PieceDecode", "freeze_startup"]

#: the oldest generation's threshold while a decode holds full collections off: never reached
_HELD = 1 << 30
#: the longest that decodes hold full collections off at a stretch (seconds)
HOLD_MAX_S = 1.0


def freeze_startup() -> None:
    """Collect the start-up garbage, then freeze what is left (call once, before serving)."""
    gc.collect()
    gc.freeze()


class _Hold:
    """The process's one hold on full collections, shared by the decodes that overlap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # decodes run on the event loop and in the API worker's threads
        self.holders = 0
        self.saved = 0  # the oldest generation's threshold, restored when the last decode ends
        self.since = 0.0  # when the hold began or last let a full collection run (time.monotonic)

    def take(self) -> None:
        with self.lock:
            if self.holders == 0:
                young, middle, self.saved = gc.get_threshold()
                gc.set_threshold(young, middle, _HELD)
                self.since = time.monotonic()
            self.holders += 1

    def overdue(self) -> bool:
        """Whether the hold has lasted `HOLD_MAX_S`; if so, the caller runs the full collection."""
        with self.lock:
            if time.monotonic() - self.since <= HOLD_MAX_S:
                return False
            self.since = time.monotonic()
            return True

    def give_back(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0:
                young, middle, _ = gc.get_threshold()
                gc.set_threshold(young, middle, self.saved)


_hold = _Hold()


class PieceDecode:
    """One decode in pieces (a context manager): `piece_done` after each piece.

    Does nothing while the collector is disabled. Decodes may overlap: full
    collections resume when the last one ends, however it ends.
    """

    def __init__(self) -> None:
        self._active = False

    def __enter__(self) -> PieceDecode:
        if gc.isenabled():
            _hold.take()
            self._active = True
        return self

    def piece_done(self) -> None:
        """Move what the last piece built to the oldest generation, so that no later young pass walks it."""
        if self._active:
            gc.collect(1)
            if _hold.overdue():
                gc.collect()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._active:
            self._active = False
            _hold.give_back()
