"""The watchdog of hung models: the limits, and the pure verdict on a worker's health board.

A runner worker can stop making progress in two ways nothing else notices: its method runs far
longer than it should (a deadlock, a wedged device, an endless loop), or the whole process stops
(SIGSTOP, a debugger, a frozen cgroup). Either way its socket stays open, so clients would keep
queueing calls behind it. The watchdog makes both visible:

* the supervisor creates one *health board* per worker slot (a one-page shared-memory segment,
  0600, its name in the runner's registry record, unlinked when the runner stops) and zeroes it
  before each spawn;
* the worker's dispatch loop writes ``beat`` on every pass (at least every quarter second while
  idle), and ``busy_since`` / ``expected_s`` around each batch: when the method started and what
  the batching policy's cost model expected it to take;
* anyone holding the board judges it with :func:`verdict`: *slow* once the worker has made no
  progress for longer than ``max(not_ready_after_s, slow_factor x expected)`` (clients then route
  around it, and ``/readyz`` answers 503 while no worker of a runner is healthy), *hung* past
  ``restart_after_s``: the supervisor kills it (SIGKILL, which also ends a stopped process), its
  calls fail with RunnerUnavailable (HTTP 503) and the worker is restarted.

The board's layout is in `shmserve.shm.health`; the supervisor's side in
`shmserve.worker.group`, the worker's in `shmserve.worker.runner`, and
the clients' (routing and readiness) in `shmserve.link`.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Health", "WatchdogLimits", "verdict"]


class Health(enum.Enum):
    """What a worker's board says: serving, too slow to be sent calls, or to be restarted."""

    OK = "ok"
    SLOW = "slow"
    HUNG = "hung"


@dataclass(frozen=True)
class WatchdogLimits:
    """When a worker that makes no progress is marked not ready, and when it is restarted.

    ``not_ready_after_s``: the least stall that marks a worker not ready (also the whole allowance
    while it is idle: an idle loop beats four times a second). ``slow_factor``: a batch may run this
    many times its estimated cost before the worker counts as slow. ``restart_after_s``: a stall
    this long (in a batch or not) gets the worker killed and restarted.
    """

    not_ready_after_s: float = 5.0
    restart_after_s: float = 60.0
    slow_factor: float = 20.0

    def __post_init__(self) -> None:
        for name in ("not_ready_after_s", "restart_after_s", "slow_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise ConfigError(f"watchdog {name} must be a positive number, got {value!r}")
        if self.restart_after_s <= self.not_ready_after_s:
            raise ConfigError(f"watchdog restart_after_s ({self.restart_after_s}) must exceed not_ready_after_s "
                              f"({self.not_ready_after_s}): a worker is marked not ready before it is restarted")

    @classmethod
    def of(cls, value: "WatchdogLimits | dict[str, Any] | None") -> "WatchdogLimits":
        """Limits from a WatchdogLimits, a dict of its fields (as in a config file), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"not_ready_after_s", "restart_after_s", "slow_factor"}
            if unknown:
                raise ConfigError(f"unknown watchdog keys {sorted(unknown)}; "
                                  "use not_ready_after_s, restart_after_s, slow_factor")
            return cls(**value)
        raise ConfigError(f"watchdog must be a WatchdogLimits or a dict of its fields, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {"not_ready_after_s": self.not_ready_after_s, "restart_after_s": self.restart_after_s,
                "slow_factor": self.slow_factor}


def verdict(beat: float, busy_since: float, expected_s: float, now: float, limits: WatchdogLimits) -> Health:
    """Judge one board at monotonic time `now` (pure: tests drive it with a fake clock)."""
    if beat <= 0.0:
        return Health.OK  # starting: the supervisor's ready timeout covers a worker that never starts
    if busy_since > 0.0:
        stalled = now - busy_since
        allowed = max(limits.not_ready_after_s, limits.slow_factor * expected_s)
    else:
        stalled = now - beat
        allowed = limits.not_ready_after_s
    if stalled > limits.restart_after_s:
        return Health.HUNG
    if stalled > allowed:
        return Health.SLOW
    return Health.OK
