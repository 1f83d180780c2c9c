"""The /dev/shm budget: the formula, from the channel layout itself, and the too-small message."""
from __future__ import annotations

import pytest

import shmserve
from shmserve.errors import ConfigError, SharedMemoryTooSmall
from shmserve.shm import budget
from shmserve.shm.ring import DEFAULT_SLOTS, DESC_SIZE, HEADER_SIZE, ChannelLayout
from tests.runnables import EchoRunnable as Echo

MiB = 2**20


def test_channel_bytes_is_the_layout_of_a_real_channel():
    assert budget.channel_bytes(16) == ChannelLayout(DEFAULT_SLOTS, 16 * MiB, 16 * MiB).total
    # header page + two rings + two arenas, nothing else
    assert budget.channel_bytes(16) == HEADER_SIZE + 2 * DEFAULT_SLOTS * DESC_SIZE + 2 * 16 * MiB


def test_deployment_budget_counts_every_channel_and_semaphore():
    b = budget.deployment_budget([budget.RunnerShm("a", 2, 8), budget.RunnerShm("b", 3, 4)], clients=4)
    assert b.channels == 4 * 2 + 4 * 3
    assert b.channel_bytes == 4 * 2 * budget.channel_bytes(8) + 4 * 3 * budget.channel_bytes(4)
    assert b.semaphores == (2 + 3) + 4 * 2  # doorbells + one reply semaphore per (client, runner)
    assert b.semaphore_bytes == b.semaphores * 4096
    base = b.channel_bytes + b.semaphore_bytes
    assert b.headroom_bytes == max(budget.HEADROOM_MIN_BYTES, -(-base // 10))
    assert b.total_bytes == base + b.headroom_bytes
    assert b.total_mib * MiB >= b.total_bytes > (b.total_mib - 1) * MiB


def test_default_example_service_fits_a_default_container():
    # Docker's and containerd's default /dev/shm is 64 MiB; the example service has one API
    # worker and one runner worker with the default arena.
    runner = shmserve.Runner(Echo, name="echo", workers=1)
    b = budget.runners_budget([runner], clients=1)
    assert b.total_bytes <= 64 * MiB, b.describe()


def test_runners_budget_follows_worker_overrides():
    runner = shmserve.Runner(Echo, name="echo", workers=1, arena_mb=2)
    assert budget.runners_budget([runner], clients=2, workers=3).channels == 6
    assert budget.runners_budget([runner], clients=2, workers={"echo": 2}).channels == 4


def test_negative_figures_are_refused():
    with pytest.raises(ValueError):
        budget.deployment_budget([budget.RunnerShm("a", -1, 8)], clients=1)


def test_check_names_bytes_needed_free_and_the_fixes(monkeypatch):
    b = budget.deployment_budget([budget.RunnerShm("mlp", 1, 16)], clients=1)
    monkeypatch.setattr(budget, "free_bytes", lambda path: 16 * MiB)
    with pytest.raises(SharedMemoryTooSmall) as info:
        budget.check(b)
    msg = str(info.value)
    assert str(16 * MiB) in msg and str(b.total_bytes) in msg
    assert "--shm-size" in msg and "sizeLimit" in msg and "arena_mb" in msg and "runners.<name>.arena_mb" in msg
    assert isinstance(info.value, ConfigError)
    monkeypatch.setattr(budget, "free_bytes", lambda path: b.total_bytes)
    budget.check(b)  # exactly enough is enough


def test_check_of_a_missing_file_system_says_what_is_needed(tmp_path):
    b = budget.deployment_budget([budget.RunnerShm("mlp", 1, 1)], clients=1)
    with pytest.raises(SharedMemoryTooSmall, match="cannot read the free space"):
        budget.check(b, str(tmp_path / "nope"))


def test_start_refuses_before_spawning_anything(monkeypatch, shm_clean):
    runner = shmserve.Runner(Echo, name="echo-budget", workers=1, arena_mb=8)
    monkeypatch.setattr(budget, "free_bytes", lambda path: 8 * MiB)
    with pytest.raises(SharedMemoryTooSmall, match="needs"):
        shmserve.start(runner)
    assert runner._backend is None
