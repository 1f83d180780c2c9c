"""Large JSON decoded in steps: the cutter (`jsonscan`), any value (`jsonvalue`), v2 request bodies."""
from __future__ import annotations

import asyncio
import gzip
import tracemalloc

import numpy as np
import orjson
import pytest

from shmserve import jsonscan, jsonvalue
from shmserve.errors import InvalidInput
from shmserve.http.v2.codec import decode_request, decode_request_steps
from shmserve.io import JSON
from shmserve.jsonscan import PIECE_BYTES, run, run_async
from shmserve.oip.errors import InferError

LIMIT = 256 << 20


def _steps(steps: jsonscan.Steps[object]) -> tuple[object, int]:
    """The result of `steps` and how many steps it took."""
    n = 0
    while True:
        try:
            next(steps)
            n += 1
        except StopIteration as done:
            return done.value, n


def test_backslash_runs_and_quotes_cut_at_every_chunk_boundary() -> None:
    for run_len in range(5):
        tricky = "a" + "\\" * run_len + '"' + '],{"x": [1, 2]}:,'  # an escaped quote or a real one, then structure
        value = {"k": [tricky, {"v": [tricky, tricky]}, 1.5], tricky: None}
        body = orjson.dumps(value)
        for piece in range(1, 48):  # a chunk boundary at every byte of the first strings
            assert jsonvalue.loads(body, piece) == value, (run_len, piece)


@pytest.mark.parametrize("text", [b"[1, 2}", b'{"a": 1]', b"[[1, 2], [3}, 4]", b"[1, 2", b"[1, 2],", b"[1,, 2]",
                                  b"[1, 2,]", b'{"a" 1}', b'{"a": 1,}', b"[\\\"]", b'{1: 2}'])
def test_invalid_json_is_refused_whatever_the_piece_size(text: bytes) -> None:
    body = text[:1] + b" " * 40 + text[1:]  # large enough to be cut at piece size 8
    for piece in (1, 2, 3, 8, 1000):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            jsonvalue.loads(body, piece)


def test_a_large_value_is_parsed_in_many_short_steps() -> None:
    value = {"rows": [[i, i / 3, f"row {i}"] for i in range(60_000)], "meta": {"n": 60_000}}
    body = orjson.dumps(value)
    got, steps = _steps(jsonvalue.value_steps(body))
    assert got == value
    assert steps >= len(body) // PIECE_BYTES  # no step parsed much more than a piece


def test_the_event_loop_runs_between_steps(monkeypatch) -> None:
    monkeypatch.setattr(jsonscan, "STEP_BUDGET_S", 0.0)
    body = orjson.dumps(list(range(200_000)))
    ticks = 0

    async def main() -> object:
        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            return await run_async(jsonvalue.value_steps(body))
        finally:
            task.cancel()

    assert asyncio.run(main()) == list(range(200_000))
    assert ticks >= len(body) // PIECE_BYTES


def _v2_body(data: object, datatype: str = "FP32", shape: list[int] | None = None, **extra: object) -> bytes:
    n = len(data) if isinstance(data, list) else 1
    return orjson.dumps({"id": "r", "inputs": [{"name": "x", "datatype": datatype, "shape": shape or [n],
                                                "data": data}], **extra})


def test_v2_large_json_data_is_read_straight_into_an_array() -> None:
    values = np.random.default_rng(0).random(200_000).round(5)
    body = _v2_body(values.tolist(), "FP32", [500, 400])
    tracemalloc.start()
    try:
        req = decode_request(body, {}, None, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x = req.inputs["x"]
    assert x.dtype == np.float32 and x.shape == (500, 400)
    np.testing.assert_array_equal(x.reshape(-1), values.astype(np.float32))
    # A list of Python floats alone would be 8 bytes a slot plus 24 a float: ~4x this body. In steps:
    # the pieces' arrays and the assembled one (each ~half the body as float32), plus one piece's objects.
    assert peak < 2 * len(body), f"peak {peak / len(body):.2f}x the body"


def test_v2_small_and_large_bodies_decode_alike() -> None:
    for data in ([[1, 2], [3, 4]], list(range(300_000))):
        body = _v2_body(data, "INT64", [2, 2] if len(data) == 2 else [len(data)])
        req, steps = _steps(decode_request_steps(body, {}, None, LIMIT))
        assert req.inputs["x"].dtype == np.int64  # type: ignore[attr-defined]
        np.testing.assert_array_equal(req.inputs["x"].reshape(-1), np.asarray(data).reshape(-1))  # type: ignore[attr-defined]


@pytest.mark.parametrize("big", [False, True])
def test_v2_strings_and_out_of_range_numbers_in_data_are_a_400(big: bool) -> None:
    pad = [0.5] * (200_000 if big else 1)
    for bad, match in (([1e39], "out of range for float32"), (["nan"], "strings"), (["1.5"], "strings"),
                       ([[1, 2], [3]], "rectangular")):
        body = _v2_body(pad + bad if not isinstance(bad[0], list) else bad * (50_000 if big else 1), "FP32", [1])
        with pytest.raises(InferError, match=match) as err:
            decode_request(body, {}, None, LIMIT)
        assert err.value.status == 400


def test_v2_only_input_data_becomes_an_array() -> None:
    big = list(range(200_000))
    body = _v2_body([1.0], parameters={"data": big, "other": {"data": big}})
    req = decode_request(body, {}, None, LIMIT)
    assert req.parameters == {"data": big, "other": {"data": big}}


def test_v2_gzip_bodies_are_inflated_in_steps_and_limited() -> None:
    values = list(range(500_000))
    plain = _v2_body(values, "INT32")
    packed = gzip.compress(plain)
    headers = {b"content-encoding": b"gzip"}
    req, steps = _steps(decode_request_steps(packed, headers, None, LIMIT))
    np.testing.assert_array_equal(req.inputs["x"], np.arange(500_000, dtype=np.int32))  # type: ignore[attr-defined]
    assert steps >= len(plain) // (1024 * 1024)
    with pytest.raises(InferError) as err:
        decode_request(packed, headers, None, len(plain) - 1)
    assert err.value.status == 413
    with pytest.raises(InferError) as err:
        decode_request(packed[:100] + b"garbage" + packed[100:], headers, None, LIMIT)
    assert err.value.status == 400


def test_json_descriptor_parses_large_bodies_in_steps_and_as_orjson_does() -> None:
    value = {"items": [{"id": i, "tags": ["a", "b,c"]} for i in range(20_000)]}
    body = orjson.dumps(value)
    assert len(body) > 4 * PIECE_BYTES
    desc = JSON()
    assert desc.decode(body, {}) == value
    assert asyncio.run(desc.decode_async(body, {})) == value
    with pytest.raises(InvalidInput, match="not valid JSON"):
        desc.decode(body[:-1], {})
    assert run(jsonvalue.value_steps(b"  7 ")) == 7
