"""Unit tests for the watchdog's verdict (fake clock) and its health board (one segment, no processes)."""

from __future__ import annotations

import pytest

from shmserve.errors import ConfigError
from shmserve.shm.health import HealthBoard
from shmserve.watchdog import Health, WatchdogLimits, verdict

LIMITS = WatchdogLimits(not_ready_after_s=2.0, restart_after_s=10.0, slow_factor=20.0)


def test_a_board_never_written_is_a_starting_worker() -> None:
    assert verdict(0.0, 0.0, 0.0, 1e6, LIMITS) is Health.OK


def test_an_idle_worker_that_stops_beating_is_slow_then_hung() -> None:
    # An idle loop beats every 0.25 s; a stopped process (SIGSTOP) beats no more.
    assert verdict(100.0, 0.0, 0.0, 101.9, LIMITS) is Health.OK
    assert verdict(100.0, 0.0, 0.0, 102.1, LIMITS) is Health.SLOW
    assert verdict(100.0, 0.0, 0.0, 110.1, LIMITS) is Health.HUNG


def test_a_batch_is_allowed_a_multiple_of_its_expected_cost() -> None:
    # Expected 0.5 s: slow only past 20 x 0.5 = 10 s... which is also the restart limit.
    assert verdict(100.0, 100.0, 0.5, 108.0, LIMITS) is Health.OK
    # Expected 10 ms: the floor of 2 s applies.
    assert verdict(100.0, 100.0, 0.01, 101.5, LIMITS) is Health.OK
    assert verdict(100.0, 100.0, 0.01, 102.5, LIMITS) is Health.SLOW
    # Past the restart limit the batch is hung whatever was expected.
    assert verdict(100.0, 100.0, 5.0, 110.5, LIMITS) is Health.HUNG


def test_a_running_batch_is_judged_by_its_start_not_by_the_last_beat() -> None:
    assert verdict(50.0, 100.0, 0.0, 101.0, LIMITS) is Health.OK


def test_limits_are_validated_and_read_from_dicts() -> None:
    assert WatchdogLimits.of(None) == WatchdogLimits()
    assert WatchdogLimits.of({"restart_after_s": 30}).restart_after_s == 30
    with pytest.raises(ConfigError, match="must exceed"):
        WatchdogLimits(not_ready_after_s=5, restart_after_s=5)
    with pytest.raises(ConfigError, match="positive"):
        WatchdogLimits(not_ready_after_s=-1)
    with pytest.raises(ConfigError, match="unknown watchdog keys"):
        WatchdogLimits.of({"restart_s": 1})


def test_board_round_trip(shm_clean) -> None:
    board = HealthBoard.create()
    try:
        reader = HealthBoard.attach(board.name)
        board.start(1234, 10.0)
        assert reader.read() == (10.0, 0.0, 0.0, 1234)
        board.begin(11.0, 0.25)
        assert reader.read()[:3] == (10.0, 11.0, 0.25)
        assert reader.judge(11.0 + 6.0, LIMITS) is Health.SLOW
        board.end(12.0)
        assert reader.read()[:2] == (12.0, 0.0)
        board.reset()
        assert reader.judge(1e6, LIMITS) is Health.OK
        reader.close()
    finally:
        board.close(unlink=True)


class _Board:
    """A health board whose verdict the test sets, counting its readings."""

    def __init__(self) -> None:
        self.health = Health.OK
        self.readings = 0

    def judge(self, now: float, limits: WatchdogLimits) -> Health:
        self.readings += 1
        return self.health

    def close(self) -> None:
        pass


def test_the_pool_reuses_a_healthy_reading_for_its_period_and_skips_a_stalled_worker() -> None:
    from shmserve.errors import RunnerUnavailable
    from shmserve.link import HEALTH_EVERY_S, WorkerLink
    from shmserve.pool import LinkPool

    link = WorkerLink("r", 0, "")
    assert link.healthy_until == float("inf")  # no board: always judged healthy, never read
    board = _Board()
    link.board, link.healthy_until, link.live = board, -1.0, True  # type: ignore[assignment]
    pool = LinkPool("r", [link], 4, 1 << 20, LIMITS, None, lambda: None)  # type: ignore[arg-type]
    assert pool.pick() is link and board.readings == 1
    assert pool.pick() is link and board.readings == 1  # within HEALTH_EVERY_S: the reading holds, no call
    link.healthy_until -= HEALTH_EVERY_S + 1.0  # the period is over (as if time passed)
    link._health_at -= HEALTH_EVERY_S + 1.0
    board.health = Health.SLOW
    with pytest.raises(RunnerUnavailable, match="no progress"):
        pool.pick()
    assert board.readings == 2 and link.healthy_until == -1.0
    with pytest.raises(RunnerUnavailable):  # a stalled verdict is reused too, by `healthy` itself
        pool.pick()
    assert board.readings == 2
    link.close_board()
    assert link.healthy_until == float("inf") and pool.pick() is link
