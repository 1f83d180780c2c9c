"""Lease files never outlive their processes: removed at a clean exit, swept after a kill."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from shmserve import lease, registry

pytestmark = pytest.mark.integration

CHILD = """
import os, signal, sys, orjson
from shmserve import lease
from shmserve.shm.signal import Signal
sig = Signal.create()  # never unlinked by this code
print(orjson.dumps({"lease": lease.current().id, "name": "sem." + sig.name.lstrip("/")}).decode(), flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _child(how: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True, timeout=60)
    info: dict[str, str] = orjson.loads(done.stdout.splitlines()[0])
    return info


def test_clean_exit_removes_its_lease_and_its_names(shm_clean):
    info = _child("exit")
    assert lease.state(info["lease"]) == lease.UNKNOWN  # the file is gone
    assert info["name"] not in os.listdir("/dev/shm")


def test_killed_process_leaves_a_free_lease_that_the_sweep_removes(shm_clean):
    info = _child("kill")
    assert lease.state(info["lease"]) == lease.DEAD and info["name"] in os.listdir("/dev/shm")
    removed = registry.sweep()
    assert info["name"] in removed and info["name"] not in os.listdir("/dev/shm")
    assert lease.state(info["lease"]) == lease.UNKNOWN


def test_readiness_follows_the_supervisors_lease(unique_name, shm_clean, dead_lease):
    import shmserve
    from tests.runnables import EchoRunnable

    r = shmserve.Runner(EchoRunnable, name=unique_name, workers=1, arena_mb=1)
    with shmserve.start(r):
        client = r._backend
        assert client.ready()
        live = client.record["lease"]
        client.record["lease"] = dead_lease()  # as if its supervisor died while the workers still answer
        try:
            assert not client.ready()
        finally:
            client.record["lease"] = live
        assert client.ready()
    registry.sweep()  # the made-up dead lease file
