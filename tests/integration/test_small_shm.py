"""A real small /dev/shm: a tmpfs of 16 MiB or 64 MiB in a private mount namespace (root only).

Docker's and containerd's default /dev/shm is 64 MiB. The example service and
the quickstart must start and serve there; with 16 MiB it must refuse with the numbers and the
fixes, and nothing may die of SIGBUS.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from .namespaces import refusal

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("small_shm_check.py")
ROOT = SCRIPT.parents[2]


def _run_in_small_shm(size_mib: int, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a private mount namespace whose /dev/shm is a fresh `size_mib` MiB tmpfs."""
    why = refusal(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"], "a tmpfs in a private mount namespace")
    if why:
        pytest.skip(why)
    cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size_mib}m,mode=1777 tmpfs /dev/shm && exec "$@"',
           "sh", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kwargs)  # type: ignore[call-overload]


def _in_small_shm(size_mib: int, mode: str) -> dict[str, object]:
    proc = _run_in_small_shm(size_mib, [sys.executable, str(SCRIPT), mode])
    assert proc.returncode == 0, f"the check script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, object] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_16_mib_shm_refuses_with_the_numbers_and_the_fixes():
    r = _in_small_shm(16, "refuse")
    seg_error = str(r["segment_error"])
    assert "bytes" in seg_error and "free" in seg_error and "--shm-size" in seg_error, seg_error
    out = str(r["serve_output"])
    assert r["serve_code"] == 2, out  # a configuration error, not a signal (SIGBUS would read -7)
    assert "SharedMemoryTooSmall" in out and "needs" in out and "free" in out, out
    assert "--shm-size" in out and "sizeLimit" in out and "arena_mb" in out, out


def test_64_mib_shm_starts_and_serves_the_example_service():
    r = _in_small_shm(64, "serve")
    out = str(r["serve_output"])
    assert r["ready"], out
    assert r["predict_status"] == 200 and r["predict_shape"] == [2, 10], out
    assert r["serve_code"] == 0, out
    assert r["shm_left"] == [], r["shm_left"]


def test_64_mib_shm_runs_the_quickstart(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, SHMSERVE_HOME=str(tmp_path / "home"))
    out = _run_in_small_shm(64, [sys.executable, "-m", "shmserve.examples.quickstart"], cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "matches the model called in-process: True" in out.stdout
