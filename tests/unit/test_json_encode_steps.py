"""Large JSON answers are written in steps (`dumps_json_steps`), byte for byte as in one call."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

import shmserve
from shmserve.descriptor import dumps_json, dumps_json_steps, json_in_steps
from shmserve.http.app import App
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON, NumpyNdarray
from shmserve.jsonscan import run
from tests.unit.test_http_protocol import FakeTransport, post, responses

RNG = np.random.default_rng(7)
A = RNG.random((50, 7)).astype(np.float32)
VALUES = [
    A, A.astype(np.float64), A.astype(">f4"), A[:, ::2], A.astype(np.float16), (A * 100).astype(np.int64),
    A > 0.5, np.where(A > 0.9, np.nan, A), RNG.random((6, 5, 4)), RNG.random(300),
    {"a": A, "b": [1, 2.5, None], "c": {"d": A}}, [A, 1, "x", A.T], (A, A), list(range(1000)),
    [[float(i), i] for i in range(500)], {"empty": np.zeros((0, 3))}, [], {}, [np.float32(1.5), np.int64(3)] * 40,
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("pieces", [(64, 32, 3), (200, 1000, 17), (1 << 20, 1 << 18, 8192)])
def test_the_steps_write_the_bytes_of_one_call(value, pieces) -> None:
    assert run(dumps_json_steps(value, *pieces)) == dumps_json(value)


def test_a_value_that_cannot_be_written_fails_as_in_one_call() -> None:
    for bad in ({1: A}, [A, object()], {"x": [A, object()]}):
        with pytest.raises(TypeError):
            dumps_json(bad)
        with pytest.raises(TypeError):
            run(dumps_json_steps(bad, 64, 32, 3))


def test_a_50_mb_answer_is_written_in_many_short_steps() -> None:
    big = RNG.random((16000, 784)).astype(np.float32)  # 50 MB as float32, ~140 MB of JSON
    steps = dumps_json_steps({"y": big})
    count = 0
    while True:
        try:
            next(steps)
            count += 1
        except StopIteration as done:
            out = done.value
            break
    assert count >= big.nbytes // (256 * 1024)
    assert out == dumps_json({"y": big})


def test_small_values_are_written_at_once() -> None:
    assert not json_in_steps(A) and not json_in_steps({"a": A}) and not json_in_steps([1, 2])
    assert not NumpyNdarray().encode_in_steps(A, b"")
    big = np.zeros((1000, 784), np.float32)
    assert NumpyNdarray().encode_in_steps(big, b"application/json") and JSON().encode_in_steps({"y": big}, b"")
    assert not NumpyNdarray().encode_in_steps(big, b"application/x-npy")
    # no Accept header, an ndarray: NumpyNdarray answers without json_in_steps, by the same rule
    for value in (big, A, np.zeros((), np.float32), big[:, :1], np.zeros(300_000, np.float64)):
        assert NumpyNdarray().encode_in_steps(value, b"") == json_in_steps(value)


def test_the_descriptors_answer_in_steps_as_they_answer_at_once() -> None:
    big = RNG.random((1000, 784)).astype(np.float32)
    for desc, value, accept in ((NumpyNdarray(), big, b""), (JSON(), {"y": big, "n": 1}, b""),
                                (NumpyNdarray(), big, b"application/octet-stream")):
        assert asyncio.run(desc.encode_async(value, accept)) == desc.encode(value, accept)


def test_the_server_serves_another_connection_while_a_large_answer_is_written() -> None:
    svc = shmserve.Service("steps_svc")
    order: list[str] = []
    other: dict = {}

    @svc.api(input=JSON(), output=JSON())
    async def big(body: object) -> dict:
        # The other connection's request arrives as the large answer starts to be written.
        asyncio.get_running_loop().call_soon(other["proto"].data_received, post(b"/small", b"1", _JSON))
        return {"y": np.ones((4000, 784), np.float32)}  # 12.5 MB of float32: ~20 ms to write in one call

    @svc.api(input=JSON(), output=JSON())
    async def small(body: object) -> int:
        return 1

    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(1)
    app = App(svc, executor=executor, version="test")  # type: ignore[arg-type]
    state = ServerState(max_body_bytes=1 << 20)
    try:
        conns = []
        for name in ("big", "small"):
            proto = HttpProtocol(app, state)
            tr = FakeTransport()
            tr.write = _noting(tr.write, name, order)  # type: ignore[method-assign]
            proto.connection_made(tr)
            conns.append((proto, tr))
        other["proto"] = conns[1][0]

        async def scenario() -> None:
            conns[0][0].data_received(post(b"/big", b"1", _JSON))
            for _ in range(1000):
                if len(order) == 2:
                    return
                await asyncio.sleep(0.001)

        loop.run_until_complete(scenario())
        assert order == ["small", "big"], order
        (status, _, body), = responses(conns[0][1].data)
        assert status == 200 and len(orjson.loads(body)["y"]) == 4000
    finally:
        app.close()
        executor.shutdown()
        loop.close()


_JSON = b"Content-Type: application/json\r\n"


def _noting(write, name: str, order: list[str]):
    def noted(data: bytes) -> None:
        order.append(name)
        write(data)
    return noted
