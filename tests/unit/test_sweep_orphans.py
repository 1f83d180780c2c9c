"""Names whose lease is in no runtime directory: swept only on proof that nobody holds them (fake /proc)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from shmserve import registry

LEASE = "0123456789abcdef"  # a well-formed id whose lease file exists nowhere


def fake_proc(root: Path, processes: dict[int, tuple[list[str], list[str]]], ns: str = registry.INIT_PID_NS) -> Path:
    """/proc with `processes`: pid -> (paths it maps, paths its descriptors point at)."""
    (root / "self" / "ns").mkdir(parents=True)
    (root / "self" / "ns" / "pid").symlink_to(ns)
    for pid, (maps, fds) in processes.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "maps").write_text("".join(f"7f00-7f01 rw-s 00000000 00:1a 42   {m}\n" for m in maps))
        (root / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{pid}\t{pid}\t{pid}\t{pid}\n")
        for i, target in enumerate(fds):
            (root / str(pid) / "fd" / str(i)).symlink_to(target)
    return root


@pytest.fixture
def shm(tmp_path: Path) -> Path:
    path = tmp_path / "shm"
    path.mkdir()
    for entry in (f"sem.shmserve_{LEASE}_a", f"sem.shmserve_{LEASE}_b", f"shmserve_{LEASE}_c", f"shmserve_{LEASE}_d"):
        (path / entry).write_bytes(b"")
    return path


def names(shm: Path) -> dict[str, list[str]]:
    return {LEASE: sorted(os.listdir(shm))}


def test_unheld_names_of_no_known_lease_are_orphans_and_held_ones_are_kept(
        tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ORPHAN_AGE_S", 0.0)
    proc = fake_proc(tmp_path / "proc", {
        10: ([f"{shm}/sem.shmserve_{LEASE}_a", "/usr/lib/libc.so.6"], []),  # maps a semaphore
        11: ([], [f"{shm}/shmserve_{LEASE}_c (deleted)", "/dev/null"]),  # holds a segment open
    })
    leases = tmp_path / "leases"
    leases.mkdir()
    orphans = registry._orphans(names(shm), leases, proc, shm)
    assert sorted(orphans) == [f"sem.shmserve_{LEASE}_b", f"shmserve_{LEASE}_d"]


def test_young_names_are_kept(tmp_path: Path, shm: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {})
    (tmp_path / "leases").mkdir()
    assert registry._orphans(names(shm), tmp_path / "leases", proc, shm) == []  # made just now


def test_nothing_is_judged_outside_the_initial_pid_namespace(tmp_path: Path, shm: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ORPHAN_AGE_S", 0.0)
    proc = fake_proc(tmp_path / "proc", {}, ns="pid:[4026532999]")  # a container's: siblings are invisible
    (tmp_path / "leases").mkdir()
    assert registry.holders(proc, shm, os.getuid()) is None
    assert registry._orphans(names(shm), tmp_path / "leases", proc, shm) == []


def test_a_process_that_could_hold_them_but_cannot_be_looked_into_keeps_them(
        tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ORPHAN_AGE_S", 0.0)
    uid = os.getuid()
    other = 54321 if uid != 54321 else 54322
    proc = fake_proc(tmp_path / "proc", {uid: ([], []), other: ([], [])})  # Uid lines are the pids
    real = registry._look_into

    def look(pid_dir: Path) -> tuple[str, list[str]]:
        raise PermissionError(pid_dir)

    monkeypatch.setattr(registry, "_look_into", look)
    (tmp_path / "leases").mkdir()
    assert registry._orphans(names(shm), tmp_path / "leases", proc, shm) == []  # one of this user's: unknown
    # Another user's process (not root) cannot open this user's 0600 names: it does not count.
    monkeypatch.setattr(registry, "_look_into",
                        lambda d: look(d) if d.name == str(other) else real(d))
    assert len(registry._orphans(names(shm), tmp_path / "leases", proc, shm)) == 4


def test_a_lease_known_here_or_in_the_default_directory_is_not_judged_as_an_orphan(
        tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ORPHAN_AGE_S", 0.0)
    proc = fake_proc(tmp_path / "proc", {})
    leases = tmp_path / "leases"
    leases.mkdir()
    (leases / f"{LEASE}.lease").write_bytes(b"")  # here (dead: the ordinary sweep takes its names)
    assert registry._orphans(names(shm), leases, proc, shm) == []
    (leases / f"{LEASE}.lease").unlink()
    monkeypatch.setattr(registry, "_lease_elsewhere", lambda lease_id, leases: True)
    assert registry._orphans(names(shm), leases, proc, shm) == []
