"""The README's first command: the quickstart must keep working."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_quickstart_serves_and_answers(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, SHMSERVE_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "shmserve.examples.quickstart"], capture_output=True, text=True,
                         timeout=180, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "matches the model called in-process: True" in out.stdout
    assert "names whose owner is gone: 0" in out.stdout
