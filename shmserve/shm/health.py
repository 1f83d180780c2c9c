"""A worker's health board: one shared-memory page the watchdog reads (see `shmserve.watchdog`).

The supervisor creates one board per worker slot (0600, unguessable name, kept
across restarts of the slot's worker, unlinked when the runner stops; a killed
supervisor's board is swept like its other names) and zeroes it before each
spawn. Only the worker writes it; the supervisor and every client read it.

Layout (little endian, offsets in bytes)::

    0   beat         f64  CLOCK_MONOTONIC time of the dispatch loop's last pass (0: starting)
    8   busy_since   f64  when the running batch's method was called (0: no batch running)
    16  expected_s   f64  the cost model's estimate for that batch (0: not known yet)
    24  pid          u64  the worker process that writes the board
"""
from __future__ import annotations

import struct
from typing import Any

from ..watchdog import Health, WatchdogLimits, verdict
from .segment import PAGE, Segment

__all__ = ["BOARD", "HealthBoard"]

BOARD = struct.Struct("<dddQ")
BEAT_OFF, BUSY_OFF, EXPECTED_OFF, PID_OFF = 0, 8, 16, 24
_F64 = struct.Struct("<d")


class HealthBoard:
    """One worker's board, mapped by the supervisor (creator), the worker (writer) and clients (readers)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self._buf: Any = memoryview(segment.buf)

    @classmethod
    def create(cls) -> "HealthBoard":
        return cls(Segment.create(PAGE))

    @classmethod
    def attach(cls, name: str) -> "HealthBoard":
        return cls(Segment.attach(name, populate=False))

    def reset(self) -> None:
        """Zero the board (before a worker is spawned into the slot)."""
        BOARD.pack_into(self._buf, 0, 0.0, 0.0, 0.0, 0)

    def start(self, pid: int, now: float) -> None:
        BOARD.pack_into(self._buf, 0, now, 0.0, 0.0, pid)

    def beat(self, now: float) -> None:
        _F64.pack_into(self._buf, BEAT_OFF, now)

    def begin(self, now: float, expected_s: float) -> None:
        """A batch's method is about to be called."""
        _F64.pack_into(self._buf, EXPECTED_OFF, expected_s)
        _F64.pack_into(self._buf, BUSY_OFF, now)

    def end(self, now: float) -> None:
        _F64.pack_into(self._buf, BUSY_OFF, 0.0)
        _F64.pack_into(self._buf, BEAT_OFF, now)

    def read(self) -> tuple[float, float, float, int]:
        """(beat, busy_since, expected_s, pid)."""
        beat, busy, expected, pid = BOARD.unpack_from(self._buf, 0)
        return beat, busy, expected, pid

    def judge(self, now: float, limits: WatchdogLimits) -> Health:
        beat, busy, expected, _pid = self.read()
        return verdict(beat, busy, expected, now, limits)

    def close(self, unlink: bool = False) -> None:
        if unlink:
            self.segment.unlink()
        try:
            self._buf.release()
        except (BufferError, ValueError):
            pass
        self.segment.close()
