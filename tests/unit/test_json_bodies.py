"""Large JSON tensor bodies: memory a small multiple of the body, decoded off the event loop."""
from __future__ import annotations

import asyncio
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

import shmserve
from shmserve.http.app import App
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON, NumpyNdarray
from shmserve.jsonarray import PIECE_BYTES
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


def test_only_large_json_bodies_are_decoded_off_the_loop() -> None:
    desc = NumpyNdarray(dtype="float32")
    big = b"[" + b"1," * PIECE_BYTES + b"1]"
    assert desc.decode_off_loop(big, {b"content-type": b"application/json"})
    assert desc.decode_off_loop(big, {})
    assert not desc.decode_off_loop(b"[1, 2]", {})
    assert not desc.decode_off_loop(big, {b"content-type": b"application/octet-stream"})
    assert not JSON().decode_off_loop(big, {})


class ThreadRecording(NumpyNdarray):
    def __init__(self) -> None:
        super().__init__(dtype="float32")
        self.threads: list[str] = []

    def decode(self, body, headers):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread().name)
        return super().decode(body, headers)


def test_the_app_decodes_large_bodies_in_its_thread_pool_and_small_ones_inline() -> None:
    desc = ThreadRecording()
    svc = shmserve.Service("json_bodies")

    @svc.api(input=desc, output=JSON())
    async def total(x: np.ndarray) -> float:
        return float(x.sum())

    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="decode-pool")
    try:
        app = App(svc, executor=executor)
        state = ServerState()

        def ask(body: bytes) -> tuple[int, bytes]:
            proto, tr = HttpProtocol(app, state), FakeTransport()
            proto.connection_made(tr)

            async def run() -> None:
                proto.data_received(post(b"/total", body, b"Content-Type: application/json\r\n"))
                for _ in range(2000):
                    if tr.data:
                        return
                    await asyncio.sleep(0.005)

            loop.run_until_complete(run())
            (status, _, out), = responses(tr.data)
            return status, out

        assert ask(b"[1, 2, 3]") == (200, b"6.0")
        n = PIECE_BYTES
        assert ask(b"[" + b"1," * n + b"1]") == (200, b"%d.0" % (n + 1))
        assert ask(b"[" + b"1," * n + b'"x"]')[0] == 400
        assert desc.threads[0] == threading.main_thread().name
        assert all(t.startswith("decode-pool") for t in desc.threads[1:]) and len(desc.threads) == 3
    finally:
        executor.shutdown()
        loop.close()
