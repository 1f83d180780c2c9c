"""CI runs the perf suite's correctness parts (no timing assertions): `python -m perf run --check`."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


BENCH = os.environ.get("SHMSERVE_BENCH_DIR") or str(ROOT.parent / "shared" / "bench")


@pytest.mark.skipif(not os.path.exists(os.path.join(BENCH, "workload.py")),
                    reason=f"the common benchmark workload is not at {BENCH}")
def test_perf_check_mode_passes():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "perf", "run", "--check"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all correctness parts passed" in out.stdout + out.stderr
