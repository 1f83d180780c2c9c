import os
import secrets
from pathlib import Path

import posix_ipc
import pytest

from shmserve import lease, registry
from shmserve.errors import RunnerNameClash, RunnerUnavailable, RuntimeDirUnsafe
from shmserve.shm.segment import Segment, new_name, owner_lease
from shmserve.shm.signal import Signal


def test_names_are_unguessable_and_carry_the_owner():
    a, b = new_name(), new_name()
    assert a != b and len(a) > 40
    mine = lease.current().id
    assert owner_lease(a) == mine
    assert owner_lease("sem." + a.lstrip("/")) == mine
    assert owner_lease("/other") is None
    assert owner_lease("/shmserve_123_abc") is None  # a pid-era name: no lease id


def test_segments_are_private(shm_clean):
    seg = Segment.create(8192)
    try:
        mode = os.stat("/dev/shm/" + seg.name.lstrip("/")).st_mode & 0o777
        assert mode == 0o600
    finally:
        seg.unlink()
        seg.close()


def test_lease_states(dead_lease):
    mine = lease.current()
    assert lease.state(mine.id) == lease.LIVE and lease.alive(mine.id)
    dead = dead_lease()
    assert lease.state(dead) == lease.DEAD
    assert lease.state(secrets.token_hex(8)) == lease.UNKNOWN
    assert lease.state("../../etc/passwd") == lease.UNKNOWN
    lease.remove(dead)
    assert lease.state(dead) == lease.UNKNOWN


def test_released_lease_leaves_no_file(tmp_path):
    held = lease.Lease.take(tmp_path)
    assert lease.state(held.id, tmp_path) == lease.LIVE
    held.release()
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_what_dead_leases_left_and_keeps_the_rest(shm_clean, dead_lease):
    dead = dead_lease()
    seg = Segment.create(4096, name=new_name(dead))
    sem = Signal.create(new_name(dead))
    mine = Signal.create()
    unknown = Signal.create(new_name(secrets.token_hex(8)))  # a run with another runtime directory
    folder = registry.runtime_dir() / f"{registry.METRICS_PREFIX}{dead}"
    folder.mkdir()
    staged = registry.runtime_dir() / f".somerunner.{dead}.tmp"  # a record its killed writer never linked
    staged.write_bytes(b"{}")
    try:
        removed = registry.sweep()
        assert seg.name.lstrip("/") in removed and "sem." + sem.name.lstrip("/") in removed
        assert not os.path.exists("/dev/shm/" + seg.name.lstrip("/"))
        assert os.path.exists("/dev/shm/sem." + mine.name.lstrip("/"))  # live owner: kept
        assert os.path.exists("/dev/shm/sem." + unknown.name.lstrip("/"))  # owner unknown here: kept
        assert not folder.exists() and not staged.exists()
        assert lease.state(dead) == lease.UNKNOWN  # its lease file went last
    finally:
        seg.close()
        sem.close()
        for s in (mine, unknown):
            s.unlink()
            s.close()
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.Semaphore(sem.name)


def test_register_clash_and_stale_entries(unique_name, dead_lease):
    registry.register(unique_name, {})
    try:
        with pytest.raises(RunnerNameClash, match="already served"):
            registry.register(unique_name, {})
        record = registry.lookup(unique_name)
        assert record["supervisor_pid"] == os.getpid() and record["lease"] == lease.current().id
    finally:
        registry.unregister(unique_name)
    path = registry.runtime_dir() / f"{unique_name}.json"
    path.write_text(f'{{"lease": "{dead_lease()}", "supervisor_pid": {os.getpid()}}}')  # a live pid, dead lease
    with pytest.raises(RunnerUnavailable, match="exited"):
        registry.lookup(unique_name)
    registry.register(unique_name, {})  # stale entry is replaced
    registry.unregister(unique_name)
    with pytest.raises(RunnerUnavailable, match="no runner named"):
        registry.lookup(unique_name)


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    path = tmp_path / "rd"
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(path))
    return path


def test_runtime_dir_is_created_private(rundir):
    assert registry.runtime_dir() == rundir
    assert (rundir.stat().st_mode & 0o777) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another user")
def test_runtime_dir_created_by_another_user_is_refused_with_the_fix(rundir):
    rundir.mkdir(mode=0o700)
    os.chown(rundir, 65534, 65534)
    with pytest.raises(RuntimeDirUnsafe, match="belongs to uid 65534") as info:
        registry.runtime_dir()
    assert "remove it" in str(info.value) and "SHMSERVE_RUNTIME_DIR" in str(info.value)


def test_runtime_dir_that_others_may_write_is_refused_with_the_fix(rundir):
    rundir.mkdir()
    rundir.chmod(0o777)
    with pytest.raises(RuntimeDirUnsafe, match="mode 0777") as info:
        registry.runtime_dir()
    assert "chmod 700" in str(info.value)


def test_runtime_dir_symlink_is_refused(rundir, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    Path(rundir).symlink_to(target)  # another user's link to a directory that looks private
    with pytest.raises(RuntimeDirUnsafe, match="symbolic link"):
        registry.runtime_dir()
