"""Doorbell semaphores and spin-then-sleep waiting (one process, threads at most)."""
from __future__ import annotations

import threading

import pytest

from shmserve.shm.signal import DEFAULT_SPIN_S, Signal, Spinner, spin_budget_s


@pytest.fixture
def sig(shm_clean):
    s = Signal.create()
    yield s
    s.unlink()
    s.close()


def test_spin_takes_a_pending_post(sig):
    sig.post()
    assert sig.spin(1.0)
    assert sig.value() == 0


def test_spin_comes_back_empty_without_a_post(sig):
    assert not sig.spin(0.0002)


def test_spinner_sees_a_post_from_another_thread(sig):
    started = threading.Event()

    def poster():
        started.wait(5)
        sig.post()

    t = threading.Thread(target=poster)
    t.start()
    started.set()
    try:
        assert Spinner(0.5).wait(sig, 5.0)
    finally:
        t.join(5)
    assert sig.value() == 0


def test_spinner_backs_off_after_empty_spins_and_recovers(sig):
    sp = Spinner(0.0001)
    assert not sp.wait(sig, 0.001)  # spun, then slept: nothing came
    assert (sp.skip, sp.backoff) == (1, 2)
    assert not sp.wait(sig, 0.0005)  # a sleeping wait only
    assert sp.skip == 0
    assert not sp.wait(sig, 0.001)  # spins again, comes up empty again: skips twice now
    assert (sp.skip, sp.backoff) == (2, 4)
    for _ in range(10):  # the skip count is capped
        sp.skip = 0
        sp.wait(sig, 0.0002)
    assert sp.backoff == Spinner.MAX_SKIP and sp.skip <= Spinner.MAX_SKIP
    sp.skip = 0
    sig.post()
    assert sp.wait(sig, 1.0)  # a spin that finds a post resets the back-off
    assert (sp.skip, sp.backoff) == (0, 1)


def test_a_zero_budget_only_sleeps(sig):
    sp = Spinner(0.0)
    assert not sp.wait(sig, 0.001)
    assert (sp.skip, sp.backoff) == (0, 1)
    sig.post()
    assert sp.wait(sig, 1.0)


def test_spin_budget_from_the_environment(monkeypatch):
    monkeypatch.delenv("SHMSERVE_SPIN_US", raising=False)
    assert spin_budget_s() == DEFAULT_SPIN_S
    monkeypatch.setenv("SHMSERVE_SPIN_US", "0")
    assert spin_budget_s() == 0.0
    monkeypatch.setenv("SHMSERVE_SPIN_US", "25")
    assert spin_budget_s() == pytest.approx(25e-6)
    monkeypatch.setenv("SHMSERVE_SPIN_US", "fast")
    with pytest.raises(ValueError, match="SHMSERVE_SPIN_US"):
        spin_budget_s()


def test_try_post_on_a_closed_signal_says_false_instead_of_raising():
    sig = Signal.create()
    sig.unlink()
    assert sig.try_post() is True
    assert sig.wait(0) is True
    sig.close()
    assert sig.try_post() is False


class _CountingSem:
    """A real semaphore that counts the `acquire` calls made on it."""

    def __init__(self, sem):
        self._sem = sem
        self.acquires = 0

    @property
    def value(self):
        return self._sem.value

    def acquire(self, timeout=None):
        self.acquires += 1
        return self._sem.acquire(timeout)

    def release(self):
        self._sem.release()


def test_drain_takes_every_pending_post_and_an_empty_drain_tries_no_take(sig):
    real = sig._sem
    counting = sig._sem = _CountingSem(real)
    try:
        assert sig.drain() == 0
        assert counting.acquires == 0  # no refused acquire(0): nothing raised on the (common) empty drain
        for _ in range(3):
            sig.post()
        assert sig.drain() == 3
        assert counting.acquires == 3 and sig.value() == 0
        assert sig.drain() == 0 and counting.acquires == 3
    finally:
        sig._sem = real
