import os

import posix_ipc
import pytest

from shmserve import registry
from shmserve.errors import RunnerNameClash, RunnerUnavailable
from shmserve.shm.segment import Segment, new_name, owner_pid
from shmserve.shm.signal import Signal


def _dead_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # never a live pid


def test_names_are_unguessable_and_carry_the_owner():
    a, b = new_name(), new_name()
    assert a != b and len(a) > 40
    assert owner_pid(a) == os.getpid()
    assert owner_pid("sem." + a.lstrip("/")) == os.getpid()
    assert owner_pid("/other") is None


def test_segments_are_private(shm_clean):
    seg = Segment.create(8192)
    try:
        mode = os.stat("/dev/shm/" + seg.name.lstrip("/")).st_mode & 0o777
        assert mode == 0o600
    finally:
        seg.unlink()
        seg.close()


def test_sweep_removes_names_of_dead_processes(shm_clean):
    seg = Segment.create(4096, name=new_name(_dead_pid()))
    sem = Signal.create(new_name(_dead_pid()))
    mine = Signal.create()
    try:
        removed = registry.sweep()
        assert seg.name.lstrip("/") in removed and "sem." + sem.name.lstrip("/") in removed
        assert not os.path.exists("/dev/shm/" + seg.name.lstrip("/"))
        assert os.path.exists("/dev/shm/sem." + mine.name.lstrip("/"))  # live owner: kept
    finally:
        seg.close()
        sem.close()
        mine.unlink()
        mine.close()
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.Semaphore(sem.name)


def test_register_clash_and_stale_entries(unique_name):
    registry.register(unique_name, {"supervisor_pid": os.getpid()})
    try:
        with pytest.raises(RunnerNameClash, match="already served"):
            registry.register(unique_name, {"supervisor_pid": os.getpid()})
        assert registry.lookup(unique_name)["supervisor_pid"] == os.getpid()
    finally:
        registry.unregister(unique_name)
    registry.register(unique_name, {"supervisor_pid": _dead_pid()})
    with pytest.raises(RunnerUnavailable, match="exited"):
        registry.lookup(unique_name)
    registry.register(unique_name, {"supervisor_pid": os.getpid()})  # stale entry is replaced
    registry.unregister(unique_name)
    with pytest.raises(RunnerUnavailable, match="no runner named"):
        registry.lookup(unique_name)
