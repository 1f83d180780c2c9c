"""A live `shmserve serve` for the Open Inference Protocol tests (REST, gRPC, shared memory).

The service has runner methods with one and several inputs and outputs, one
that raises, one that is easy to overload, and a native API next to them.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from .test_http_serve import Server, descendants, shm_entries

ROOT = Path(__file__).resolve().parents[2]
# Runner names are unique per host: this test session's name tag keeps its servers apart from other
# sessions' (its servers run one at a time, so one suffix serves them all).
SUFFIX = os.environ.get("SHMSERVE_NAME_TAG", "local")
MATHS, GATE = f"maths-{SUFFIX}", f"gate-{SUFFIX}"

SERVICE_SOURCE = textwrap.dedent('''
    """Test service for the v2 protocol tests (written to a temp dir by the tests)."""
    import os
    import time

    import numpy as np

    import shmserve
    from shmserve.io import NumpyNdarray

    SUFFIX = os.environ["V2_TEST_SUFFIX"]  # runner names are unique per host


    class Maths(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, x):
            return x * 2

        def __init__(self):
            self.batches = 0

        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def tagged(self, x):
            """Each row gets (batch number, batch size): callers that share a batch see the same number."""
            self.batches += 1
            time.sleep(0.05)  # lets concurrent callers pile up behind this batch
            return np.tile(np.array([[self.batches, len(x)]], np.float32), (len(x), 1))

        @shmserve.Runnable.method()
        def echo(self, x):
            return x

        @shmserve.Runnable.method()
        def pair(self, a, b):
            return {"sum": a + b, "product": a * b}

        @shmserve.Runnable.method()
        def scaled(self, x, factor=1.0):
            return x * factor

        @shmserve.Runnable.method()
        def boom(self, x):
            raise ValueError("model exploded")

        @shmserve.Runnable.method()
        def sleep(self, x):
            time.sleep(float(x.reshape(-1)[0]))
            return x

        @shmserve.Runnable.method()
        def hold(self, x):
            """Creates held-<x[0]> in V2_TEST_DIR, then returns x once the test creates release there (60 s at most)."""
            folder = os.environ["V2_TEST_DIR"]
            open(os.path.join(folder, "held-%d" % int(x.reshape(-1)[0])), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
                time.sleep(0.01)
            return x


    maths = shmserve.Runner(Maths, name="maths-" + SUFFIX, workers=1, max_latency_ms=200)
    gate = shmserve.Runner(Maths, name="gate-" + SUFFIX, workers=1, max_queue_size=1)
    svc = shmserve.Service("v2_test", runners=[maths, gate])


    @svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 3), enforce_shape=True),
             output=NumpyNdarray(dtype="float32"))
    async def predict(x):
        return await maths.predict.async_run(x)


    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def tagged(x):
        return await maths.tagged.async_run(x)
''')


def free_port() -> int:
    """A loopback port nobody listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class V2Server(Server):
    """`shmserve serve` of the test service on OS-picked loopback ports; `stop()` checks it left nothing."""

    def __init__(self, workdir: Path, *args: str, api_workers: int = 1, grpc: bool = False) -> None:
        self.grpc_port = free_port() if grpc else 0
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        if grpc:
            args = (*args, "--grpc-port", str(self.grpc_port))
        (workdir / "v2_test_service.py").write_text(SERVICE_SOURCE)
        self.shm_before = shm_entries()
        self.log_path = workdir / f"server-{uuid.uuid4().hex[:8]}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["V2_TEST_SUFFIX"] = SUFFIX
        env["V2_TEST_DIR"] = str(workdir)
        env.setdefault("OMP_NUM_THREADS", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmserve.cli", "serve", "v2_test_service:svc", "--port", "0",
             "--api-workers", str(api_workers), *args],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=self._log,
        )
        self.port = self._read_port(60.0)
        self.url = f"127.0.0.1:{self.port}"
        self.family = descendants(self.proc.pid)
