"""A shmserve.yaml changes what a running `shmserve serve` does."""
from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from tests.integration.test_http_serve import Server, call, wait_until

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
api_server:
  workers: 3
runners:
  arena_mb: 1
  timeout: 0.5
"""


def test_file_values_reach_the_running_server(tmp_path):
    path = tmp_path / "shmserve.yaml"
    path.write_text(CONFIG)
    # No --api-workers flag: the file's api_server.workers decides.
    srv = Server(tmp_path, "--config", str(path), api_workers=None)
    try:
        wait_until(lambda: len(srv.api_worker_pids()) == 3, 30, "three API workers in the log")
        assert len(set(srv.api_worker_pids().values())) == 3
        # runners.arena_mb = 1: a 1.4 MB tensor no longer fits (the code's default arena is 32 MiB).
        buf = io.BytesIO()
        np.save(buf, np.ones((120_000, 3), np.float32))
        status, _, body = call(srv, "POST", "/predict", buf.getvalue(), {"Content-Type": "application/x-npy"})
        assert status == 413, body
        assert b"arena" in body
        small = orjson.dumps([[1.0, 2.0, 3.0]])
        assert call(srv, "POST", "/predict", small, {"Content-Type": "application/json"})[0] == 200
        # runners.timeout = 0.5: a 3 s runner call without its own timeout now ends in 504.
        status, _, body = call(srv, "POST", "/gated", orjson.dumps({"seconds": 3}), {"Content-Type": "application/json"})
        assert status == 504, body
    finally:
        code = srv.stop()
    assert code == 0, srv.log()
