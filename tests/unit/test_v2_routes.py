"""`V2Routes` without a server: inference paths are remembered, boundedly, and keep their checks."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from shmserve.http import request_task
from shmserve.http.v2 import routes
from shmserve.http.v2.routes import V2Routes
from shmserve.oip.errors import InferError


class FakeModel:
    name, version = "m", "1"


class FakeModels:
    def __init__(self) -> None:
        self.lookups = 0

    def get(self, name: str, version: str = "") -> FakeModel:
        self.lookups += 1
        if not name.startswith("m") or version not in ("", "1"):
            raise InferError(404, f"no model named {name!r}")
        return FakeModel()


class FakeServer:
    regions = None

    def __init__(self) -> None:
        self.models = FakeModels()

    async def infer(self, model: Any, inputs: dict[str, np.ndarray], parameters: Any, requested: Any = None) -> list[tuple[str, np.ndarray]]:
        return [("output", inputs["x"] * 2)]


class FakeRequest:
    def __init__(self, method: bytes, path: bytes, body: bytes = b"") -> None:
        self.method, self.path, self.body, self.headers = method, path, body, {}


class FakeConn:
    def __init__(self) -> None:
        self.replies: list[tuple[int, bytes]] = []
        self.task: Any = None  # an asyncio.Task or a RequestTask (not awaitable): wait on `replied`
        self.replied = asyncio.Event()

    def reply(self, status: int, ctype: bytes, body: bytes, extra: bytes = b"") -> None:
        self.replies.append((status, body))
        self.replied.set()


BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}]})


async def _send(v2: V2Routes, method: bytes, path: bytes, body: bytes = BODY) -> tuple[int, Any]:
    conn = FakeConn()
    v2.dispatch(FakeRequest(method, path, body), conn)  # type: ignore[arg-type]
    await asyncio.wait_for(conn.replied.wait(), 10.0)
    status, data = conn.replies[-1]
    return status, orjson.loads(data) if data else None


def test_an_inference_path_is_resolved_once_and_keeps_its_checks() -> None:
    server = FakeServer()
    v2 = V2Routes(server)  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(3):
            status, out = await _send(v2, b"POST", b"/v2/models/m/infer")
            assert status == 200 and out["outputs"][0]["data"] == [2, 4]
        assert server.models.lookups == 1
        assert (await _send(v2, b"GET", b"/v2/models/m/infer"))[0] == 405
        assert (await _send(v2, b"POST", b"/v2/models/m/infer", b"{bad"))[0] == 400
        assert (await _send(v2, b"POST", b"/v2/models/m/versions/2/infer"))[0] == 404  # not remembered
        assert b"/v2/models/m/versions/2/infer" not in v2._infer_paths

    asyncio.run(main())


def test_remembered_paths_are_bounded() -> None:
    v2 = V2Routes(FakeServer())  # type: ignore[arg-type]

    async def main() -> None:
        for i in range(routes._MAX_CACHED_PATHS + 50):  # every path is answered, a bounded number is kept
            assert (await _send(v2, b"POST", f"/v2/models/m{i}/infer".encode()))[0] == 200

    asyncio.run(main())
    assert len(v2._infer_paths) == routes._MAX_CACHED_PATHS


@pytest.mark.skipif(request_task.start_task is None, reason="shmserve._native._task not built (or pure Python forced)")
def test_an_inference_runs_as_a_request_task_its_first_step_within_dispatch() -> None:
    v2 = V2Routes(FakeServer())  # type: ignore[arg-type]

    async def main() -> None:
        conn = FakeConn()
        v2.dispatch(FakeRequest(b"POST", b"/v2/models/m/infer", BODY), conn)  # type: ignore[arg-type]
        # FakeServer.infer never suspends: the whole request ran before dispatch returned, no asyncio.Task made
        assert conn.replies and conn.replies[0][0] == 200
        assert type(conn.task).__name__ == "RequestTask"

    asyncio.run(main())
