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


def shm_entries() -> set[str]:
    """shmserve names in /dev/shm created by this process tree's tests."""
    try:
        return {n for n in os.listdir("/dev/shm") if "shmserve_" in n}
    except OSError:
        return set()


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
