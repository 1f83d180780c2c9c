"""Shared fixtures: a private runtime directory and /dev/shm leak checks."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# Every shmserve name created by this test session (and the processes it starts,
# which inherit the environment) carries this tag, so leak checks ignore other
# processes on the machine.
NAME_TAG = "t" + uuid.uuid4().hex[:7]
os.environ["SHMSERVE_NAME_TAG"] = NAME_TAG


def shm_entries() -> set[str]:
    """shmserve names in /dev/shm created by this test session."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return set()
    out = set()
    for n in names:
        base = n[4:] if n.startswith("sem.") else n
        parts = base.split("_")
        if len(parts) == 3 and parts[0] == "shmserve" and parts[2].startswith(NAME_TAG):
            out.add(n)
    return out


@pytest.fixture(scope="session", autouse=True)
def runtime_dir():
    # Short path: Unix socket paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="shs-")
    old = os.environ.get("SHMSERVE_RUNTIME_DIR")
    os.environ["SHMSERVE_RUNTIME_DIR"] = path
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if str(ROOT) not in os.environ["PYTHONPATH"].split(os.pathsep):
        os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ["PYTHONPATH"]
    yield Path(path)
    if old is None:
        os.environ.pop("SHMSERVE_RUNTIME_DIR", None)
    else:
        os.environ["SHMSERVE_RUNTIME_DIR"] = old
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shm_clean():
    """Fail the test if it leaves new shmserve names in /dev/shm."""
    before = shm_entries()
    yield
    import gc

    gc.collect()
    leaked = shm_entries() - before
    assert not leaked, f"test leaked shared-memory names: {sorted(leaked)}"


@pytest.fixture
def unique_name():
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def dead_lease():
    """A factory of leases as a killed process leaves them: the file, with nobody holding its lock."""
    import secrets

    from shmserve import lease

    def make() -> str:
        lease_id = secrets.token_hex(8)
        (lease.lease_dir() / f"{lease_id}.lease").touch(mode=0o600)
        return lease_id

    return make
