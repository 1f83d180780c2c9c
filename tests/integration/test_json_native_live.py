"""JSON bodies served with the C parser of JSON arrays and with the Python path alone (SHMSERVE_PURE_PYTHON=1).

Two real servers of the same service, one started with ``SHMSERVE_PURE_PYTHON=1``
in its environment, get the same bodies (small ones decoded in one call, a large
one decoded a piece at a time, and bodies that are refused); their answers must
be the same, and right.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from shmserve._native import PURE_PYTHON_ENV, load
from tests.integration.test_http_serve import Server, call

pytestmark = pytest.mark.integration

_JSON = {"Content-Type": "application/json"}
_RNG = np.random.default_rng(7)
BODIES = [
    ("/predict", orjson.dumps(_RNG.standard_normal((4, 3)).tolist())),
    ("/predict", b"[[1, 2, 3], [4, 5, 6]]"),
    ("/predict", b" [[0.1, -0, 1e-3]]\n"),
    ("/chain", orjson.dumps(_RNG.standard_normal((12000, 3)).tolist())),  # ~750 KB: a piece at a time
    ("/predict", b"[[1, 2, 3], [4, 5]]"),
    ("/predict", b"[[1e400, 2, 3]]"),
    ("/predict", b'[["nan", 2, 3]]'),
    ("/predict", b"[[1, 2, 3],]"),
    ("/predict", b"[[01, 2, 3]]"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    if load("jsonarray") is None:
        pytest.skip("shmserve._native._jsonarray is not built: both servers would run the Python path")
    mp = pytest.MonkeyPatch()
    native = pure = None
    try:
        mp.delenv(PURE_PYTHON_ENV, raising=False)
        native = Server(tmp_path_factory.mktemp("native"), "--max-body-size", "2", api_workers=1)
        mp.setenv(PURE_PYTHON_ENV, "1")  # Server hands its environment to the whole process tree
        pure = Server(tmp_path_factory.mktemp("pure"), "--max-body-size", "2", api_workers=1)
        mp.undo()
        yield native, pure
    finally:
        mp.undo()
        for srv in (pure, native):  # last started first: each checks /dev/shm against what it found at start
            if srv is not None:
                assert srv.stop() == 0, srv.log()


@pytest.mark.parametrize("path, body", BODIES, ids=lambda v: v if isinstance(v, str) else repr(v[:20]))
def test_same_answers_with_and_without_the_c_parser(servers: tuple[Server, Server], path: str, body: bytes) -> None:
    native, pure = servers
    got = [call(srv, "POST", path, body, _JSON) for srv in (native, pure)]
    (status, _, answer), (pure_status, _, pure_answer) = got
    assert status == pure_status, (answer, pure_answer)
    a, b = orjson.loads(answer), orjson.loads(pure_answer)
    if status != 200:
        assert status == 400 and a["error"] == b["error"] == "InvalidInput" and a["message"] == b["message"]
        return
    assert a == b
    x = np.asarray(orjson.loads(body), np.float32)
    want = 2 * x if path == "/predict" else {"a": 2 * x, "b": 3 * x, "c": 2 * (3 * x)}
    if path == "/predict":
        np.testing.assert_array_equal(np.asarray(a, np.float32), want)
    else:
        for key in "abc":
            np.testing.assert_array_equal(np.asarray(a[key], np.float32), want[key])
