"""Large JSON bodies: memory a small multiple of the body, decoded in steps with the event loop free between them."""
from __future__ import annotations

import asyncio
import tracemalloc

import numpy as np
import orjson

import shmserve
from shmserve import jsonscan
from shmserve.http.app import App
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON, NumpyNdarray
from shmserve.jsonscan import PIECE_BYTES
from tests.unit.test_http_protocol import FakeTransport, post, responses


def _body(rows: int, cols: int) -> bytes:
    return orjson.dumps(np.random.default_rng(0).random((rows, cols)).round(6).tolist())


def test_a_large_json_array_costs_a_small_multiple_of_its_size() -> None:
    body = _body(4_000, 50)  # ~1.8 MB of JSON text
    desc = NumpyNdarray(dtype="float32")
    tracemalloc.start()
    try:
        arr = desc.decode(body, {b"content-type": b"application/json"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arr.shape == (4_000, 50) and arr.dtype == np.float32
    # One orjson parse of the whole body costs ~16x; piece by piece, the output plus one piece's objects.
    assert peak < 2 * len(body) + 20 * PIECE_BYTES, f"peak {peak / len(body):.1f}x the body"


def test_one_huge_row_is_cut_one_level_down() -> None:
    body = orjson.dumps([list(range(300_000))])
    tracemalloc.start()
    try:
        arr = NumpyNdarray().decode(body, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arr.shape == (1, 300_000) and arr[0, -1] == 299_999
    assert peak < 2 * len(body) + 20 * PIECE_BYTES, f"peak {peak / len(body):.1f}x the body"


def test_only_large_json_bodies_are_decoded_in_steps() -> None:
    desc = NumpyNdarray(dtype="float32")
    big = b"[" + b"1," * PIECE_BYTES + b"1]"
    assert desc.decode_in_steps(big, {b"content-type": b"application/json"})
    assert desc.decode_in_steps(big, {})
    assert not desc.decode_in_steps(b"[1, 2]", {})
    assert not desc.decode_in_steps(big, {b"content-type": b"application/octet-stream"})
    assert JSON().decode_in_steps(big, {}) and not JSON().decode_in_steps(b"[1, 2]", {})


def test_the_app_serves_other_work_between_the_steps_of_a_large_decode(monkeypatch) -> None:
    monkeypatch.setattr(jsonscan, "STEP_BUDGET_S", 0.0)  # let the loop in after every step
    svc = shmserve.Service("json_bodies")

    @svc.api(input=NumpyNdarray(dtype="float32"), output=JSON())
    async def total(x: np.ndarray) -> float:
        return float(x.sum())

    @svc.api(input=JSON(), output=JSON())
    async def count(x: list) -> int:
        return len(x)

    loop = asyncio.new_event_loop()
    try:
        app = App(svc)
        state = ServerState()

        def ask(path: bytes, body: bytes) -> tuple[int, bytes, int]:
            """The answer, and how many times a ticker task ran before it came."""
            proto, tr = HttpProtocol(app, state), FakeTransport()
            proto.connection_made(tr)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            async def run() -> int:
                task = loop.create_task(ticker())
                await asyncio.sleep(0)
                start = ticks
                proto.data_received(post(path, body, b"Content-Type: application/json\r\n"))
                for _ in range(100_000):
                    if tr.data:
                        break
                    await asyncio.sleep(0)
                task.cancel()
                return ticks - start

            between = loop.run_until_complete(run())
            (status, _, out), = responses(tr.data)
            return status, out, between

        status, out, between = ask(b"/total", b"[1, 2, 3]")
        assert (status, out) == (200, b"6.0") and between <= 3  # decoded at once, then one task
        n = 3 * PIECE_BYTES
        status, out, between = ask(b"/total", b"[" + b"1," * n + b"1]")
        assert (status, out) == (200, b"%d.0" % (n + 1))
        assert between > 20, between  # the loop ran the ticker between the pieces
        status, out, between = ask(b"/count", b"[" + b"[1, 2]," * n + b"[]]")
        assert (status, out) == (200, b"%d" % (n + 1)) and between > 20
        assert ask(b"/total", b"[" + b"1," * n + b'"x"]')[0] == 400
    finally:
        loop.close()
