"""A served API over the client's publish step in C and over its Python twin (``SHMSERVE_PURE_PYTHON=1`` in
the server's environment): the same answers, raw and JSON bodies, one and several tensors per call."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.test_http_serve import Server, call

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("pure", ["1", "0"])
def test_answers_with_and_without_the_c_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: str) -> None:
    monkeypatch.setenv("SHMSERVE_PURE_PYTHON", pure)
    server = Server(tmp_path, api_workers=1)
    try:
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        for _ in range(20):  # the arena's blocks and the ring's slots are reused
            status, headers, body = call(server, "POST", "/predict", x.tobytes(), {
                "content-type": "application/octet-stream", "x-tensor-dtype": "float32", "x-tensor-shape": "4,3",
                "accept": "application/octet-stream"})
            assert status == 200, body
            np.testing.assert_array_equal(np.frombuffer(body, np.float32).reshape(4, 3), x * 2)
        status, _, body = call(server, "POST", "/chain", orjson.dumps(x.tolist()),
                               {"content-type": "application/json"})
        assert status == 200, body
        got = orjson.loads(body)
        np.testing.assert_array_equal(np.asarray(got["a"]), x * 2)
        np.testing.assert_array_equal(np.asarray(got["c"]), x * 6)
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
