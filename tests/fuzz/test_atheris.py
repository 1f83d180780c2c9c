"""A short coverage-guided session of `atheris_decoders.py` (the long one: see its docstring)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")  # in the test extra on Linux x86-64, where it has wheels


def test_a_short_atheris_session_finds_no_crash(tmp_path: Path) -> None:
    target = Path(__file__).with_name("atheris_decoders.py")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(target), "-atheris_runs=3000", "-seed=1", "-max_len=512",
                           f"-artifact_prefix={tmp_path}/"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 3000" in proc.stderr
