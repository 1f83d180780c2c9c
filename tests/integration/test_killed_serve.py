"""A `shmserve serve` supervisor killed by SIGKILL leaves nothing that the next sweep keeps."""
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

pytestmark = pytest.mark.integration

SERVICE = textwrap.dedent('''
    import shmserve
    from shmserve.io import JSON

    svc = shmserve.Service("metrics_sweep")


    @svc.api(input=JSON(), output=JSON())
    def echo(body):
        return body
''')



def wait_serving(proc: subprocess.Popen, timeout_s: float) -> None:
    """Read the server's stdout until its 'serving' line, within `timeout_s`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = ""
    while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    assert "serving" in line, "the server did not start"

def test_killed_server_leaves_no_metrics_folder(tmp_path: Path, runtime_dir: Path):
    (tmp_path / "svc_metrics_sweep.py").write_text(SERVICE)
    tmp = tmp_path / "tmp"  # where tempfile would put a folder (TMPDIR), watched too
    tmp.mkdir()
    before = set(runtime_dir.glob("metrics-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmserve.cli", "serve", "svc_metrics_sweep:svc", "--port", "0"],
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )
    try:
        wait_serving(proc, 60)
        made = (set(runtime_dir.glob("metrics-*")) - before) | set(tmp.iterdir())
        assert made, "the server made no metrics folder"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its API worker, as an OOM kill would
        proc.wait(30)
    registry.sweep()
    assert not (set(runtime_dir.glob("metrics-*")) - before), "a killed server's metrics folder survived the sweep"
    assert not list(tmp.iterdir()), "a killed server's metrics folder was left in the temp directory"


RUNNER_SERVICE = textwrap.dedent('''
    import numpy as np
    import shmserve
    from shmserve.io import NumpyNdarray


    class Twice(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True)
        def predict(self, x):
            return x * 2


    twice = shmserve.Runner(Twice, name="killed_sock_twice", workers=2)
    svc = shmserve.Service("killed_sock", runners=[twice])


    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    async def predict(x):
        return await twice.predict.async_run(x)
''')


def test_a_killed_servers_worker_sockets_and_files_are_swept_by_the_next_start(
        tmp_path: Path, runtime_dir: Path) -> None:
    (tmp_path / "svc_killed_sock.py").write_text(RUNNER_SERVICE)
    before = set(runtime_dir.rglob("*")) | {runtime_dir / "leases"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmserve.cli", "serve", "svc_killed_sock:svc", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        wait_serving(proc, 120)
        socks = sorted(p.name for p in runtime_dir.glob("killed_sock_twice-*.sock"))
        assert socks == ["killed_sock_twice-0.sock", "killed_sock_twice-1.sock"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # supervisor, API worker and runner workers, as an OOM kill would
        proc.wait(30)
    left = set(runtime_dir.rglob("*")) - before
    assert any(p.suffix == ".sock" for p in left)
    # What every start does first (shmserve.start, shmserve serve): the sweep, in a new process.
    out = subprocess.run([sys.executable, "-c", "from shmserve import registry; registry.sweep()"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    remaining = sorted(str(p.relative_to(runtime_dir)) for p in set(runtime_dir.rglob("*")) - before)
    assert remaining == [], f"the sweep kept what the killed server left: {remaining}"
    assert "2 worker sockets" in out.stderr, out.stderr  # the warning counts them
