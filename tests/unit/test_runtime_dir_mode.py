"""The runtime directory's mode check: exactly a private 0700 directory is accepted.

The README: "It must be a directory of this user's with mode 0700; ... one others may write to
is refused with `RuntimeDirUnsafe`". Every group or other permission bit is refused, read and
execute too: the registry and the worker sockets are in it.
"""
from __future__ import annotations

import pytest

from shmserve import lease
from shmserve.errors import RuntimeDirUnsafe


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    path = tmp_path / "rd"
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(path))
    return path


@pytest.mark.parametrize("mode", [0o700, 0o500, 0o300])
def test_a_directory_only_its_owner_may_use_is_accepted(rundir, mode: int) -> None:
    rundir.mkdir()
    rundir.chmod(mode)
    try:
        assert lease.runtime_dir() == rundir
    finally:
        rundir.chmod(0o700)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o750, 0o705, 0o720, 0o702, 0o740, 0o704, 0o710, 0o701, 0o1777])
def test_any_group_or_other_permission_is_refused_with_the_fix(rundir, mode: int) -> None:
    rundir.mkdir()
    rundir.chmod(mode)
    with pytest.raises(RuntimeDirUnsafe, match=f"mode {mode & 0o7777:04o}") as info:
        lease.runtime_dir()
    assert "chmod 700" in str(info.value) and "SHMSERVE_RUNTIME_DIR" in str(info.value)


def test_a_file_in_its_place_is_refused(rundir) -> None:
    rundir.write_bytes(b"")
    rundir.chmod(0o600)
    with pytest.raises(RuntimeDirUnsafe, match="is not a directory"):
        lease.runtime_dir()


def test_a_missing_directory_is_created_0700_even_under_a_permissive_umask(rundir) -> None:
    import os

    old = os.umask(0)
    try:
        assert lease.runtime_dir() == rundir
    finally:
        os.umask(old)
    assert rundir.stat().st_mode & 0o7777 == 0o700
