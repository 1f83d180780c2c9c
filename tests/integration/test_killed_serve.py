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
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "serving" in line, "the server did not start"
        made = (set(runtime_dir.glob("metrics-*")) - before) | set(tmp.iterdir())
        assert made, "the server made no metrics folder"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its API worker, as an OOM kill would
        proc.wait(30)
    registry.sweep()
    assert not (set(runtime_dir.glob("metrics-*")) - before), "a killed server's metrics folder survived the sweep"
    assert not list(tmp.iterdir()), "a killed server's metrics folder was left in the temp directory"
