"""Names of a killed process whose runtime directory is gone: kept while it lives, swept once provably unheld."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shmserve import registry
from shmserve.shm.segment import unlink_name

pytestmark = pytest.mark.integration

MAKER = """
import sys, time
from shmserve.shm.segment import Segment
from shmserve.shm.signal import Signal
seg = Segment.create(4096)
sem = Signal.create()
print(seg.name.lstrip("/"), "sem." + sem.name.lstrip("/"), flush=True)
time.sleep(600)
"""


def test_a_killed_ad_hoc_process_of_another_runtime_dir_leaves_names_the_sweep_removes_when_unheld(
        tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other-run"
    other.mkdir(mode=0o700)
    proc = subprocess.Popen([sys.executable, "-c", MAKER], env={**os.environ, "SHMSERVE_RUNTIME_DIR": str(other)},
                            stdout=subprocess.PIPE, text=True)
    names: list[str] = []
    try:
        assert proc.stdout is not None
        names = proc.stdout.readline().split()
        assert len(names) == 2 and all((registry.DEV_SHM / n).exists() for n in names)
        monkeypatch.setattr(registry, "ORPHAN_AGE_S", 0.0)  # no waiting a minute in a test
        registry.sweep()  # its lease is in no directory this process knows, and it holds its names: kept
        assert all((registry.DEV_SHM / n).exists() for n in names)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        shutil.rmtree(other)  # its lease file goes with it: nothing is left to judge the owner by
        provable = registry.holders(Path("/proc"), registry.DEV_SHM, os.getuid()) is not None
        registry.sweep()
        left = [n for n in names if (registry.DEV_SHM / n).exists()]
        if provable:
            assert left == [], "unheld names of no known lease survived the sweep"
        else:  # some process here cannot be looked into, or this is not the initial PID namespace
            assert left == names, "names were swept without proof that nobody holds them"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for n in names:
            unlink_name(n)
