"""Liveness by lease across PID namespaces: two process trees, each in its own PID namespace
(``unshare -p -f --mount-proc``), share /dev/shm and the runtime directory with the test.

One tree keeps serving; the other is killed. A sweep run from a third namespace must remove
everything the dead tree left and nothing of the live one. Pids cannot tell: each tree's
supervisor is pid 2 in its own namespace, as is the sweeper in its.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from shmserve import lease, registry

from .namespaces import refusal

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("pidns_check.py")


def _in_pidns(*args: str) -> list[str]:
    # sh is pid 1 of the new namespace, so the python process (and its supervisor) is pid 2 in each
    return ["unshare", "-p", "-f", "--kill-child", "--mount-proc", "sh", "-c", '"$@"', "sh", sys.executable, str(SCRIPT), *args]


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the process tree exited early ({proc.poll()})"
    result: dict[str, Any] = orjson.loads(line)
    return result


def test_sweep_across_pid_namespaces_removes_the_dead_and_keeps_the_live(shm_clean):
    why = refusal(["-p", "-f", "--mount-proc", "true"], "a new PID namespace")
    if why:
        pytest.skip(why)
    live_name, dead_name = f"live{uuid.uuid4().hex[:8]}", f"dead{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(_in_pidns("hold", live_name), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = _line(holder)
        assert live["call_ok"] and live["names"]
        crashed = subprocess.run(_in_pidns("crash", dead_name), capture_output=True, text=True, timeout=120)
        dead = orjson.loads(crashed.stdout.splitlines()[0])
        assert dead["pid"] == live["pid"] == 2 and dead["names"]  # same pid, different namespaces
        assert lease.state(dead["lease"]) == lease.DEAD  # the killed tree's lease file is there, unlocked

        # (its worker may have removed the killed client's reply semaphore already, as it should)
        left = set(dead["names"]) & set(os.listdir("/dev/shm"))
        assert left, "the killed tree left none of its names: nothing to test"
        swept = subprocess.run(_in_pidns("sweep"), capture_output=True, text=True, timeout=120)
        report = orjson.loads(swept.stdout.splitlines()[0])
        assert report["pid"] == 2
        removed = set(report["removed"])
        shm = set(os.listdir("/dev/shm"))
        assert left <= removed and not set(dead["names"]) & shm  # everything dead: swept
        assert str(registry.runtime_dir() / f"{dead_name}.json") in removed
        assert lease.state(dead["lease"]) == lease.UNKNOWN  # and its lease file
        assert not set(live["names"]) & removed and set(live["names"]) <= shm  # nothing live
        assert registry.lookup(live_name)["lease"] == live["lease"]
        registry.sweep()  # from this (the initial) namespace too
        assert set(live["names"]) <= set(os.listdir("/dev/shm"))

        assert holder.stdin is not None
        holder.stdin.write("call\n")
        holder.stdin.flush()
        assert _line(holder)["call_ok"]  # still serving
        holder.stdin.write("stop\n")
        holder.stdin.flush()
        assert _line(holder)["stopped"]
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()  # --kill-child takes the tree down with it
            holder.wait(30)
            registry.sweep()
    assert not set(live["names"]) & set(os.listdir("/dev/shm"))
    assert lease.state(live["lease"]) == lease.UNKNOWN  # removed on its clean exit
