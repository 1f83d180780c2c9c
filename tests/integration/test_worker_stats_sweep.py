"""A SIGKILLed server's runner-worker snapshots (``/metrics``'s worker numbers) are swept at the next start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shmserve import registry
from tests.conftest import shm_entries

pytestmark = pytest.mark.integration

SERVICE = textwrap.dedent('''
    import numpy as np
    import shmserve
    from shmserve.io import NumpyNdarray


    class Twice(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True)
        def run(self, x):
            return x * 2


    twice = shmserve.Runner(Twice, name="stats_sweep_twice")
    svc = shmserve.Service("stats_sweep", runners=[twice])


    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    async def call(x):
        return await twice.run.async_run(x)
''')


def test_killed_servers_worker_snapshots_are_swept(tmp_path: Path, runtime_dir: Path, shm_clean: None) -> None:
    (tmp_path / "svc_stats_sweep.py").write_text(SERVICE)
    names_before = shm_entries()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmserve.cli", "serve", "svc_stats_sweep:svc", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        snaps: list[Path] = []
        while not snaps and time.monotonic() < deadline and proc.poll() is None:
            snaps = list(runtime_dir.glob("stats_sweep_twice-*.stats.json"))
            time.sleep(0.1)
        assert snaps, "the runner worker published no snapshot"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # supervisor, API worker and runner worker, as an OOM kill would
        proc.wait(30)

    def left() -> list[Path]:
        return [*runtime_dir.glob("stats_sweep_twice-*.stats.json"), *runtime_dir.glob(".stats_sweep_twice-*.tmp")]

    def names_left() -> set[str]:
        return shm_entries() - names_before

    # A killed process's lease is free once the kernel has ended it; killpg's SIGKILL reaches the three
    # processes at once but they exit one by one, so a sweep can find the runner worker's lease free (its
    # snapshot swept) while the API worker's is still held (its names kept until a later sweep).
    deadline = time.monotonic() + 10
    registry.sweep()
    while (left() or names_left()) and time.monotonic() < deadline:
        time.sleep(0.1)
        registry.sweep()
    assert not left(), "a killed server's worker snapshot survived the sweep"
    assert not names_left(), f"a killed server's shared-memory names survived the sweep: {sorted(names_left())}"
