"""v2 REST bodies: decoding requests and encoding responses, without a server."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from shmserve.http.v2.codec import HEADER_LENGTH, decode_request, encode_response
from shmserve.oip.errors import InferError, status_of
from shmserve.oip.models import outputs_of

LIMIT = 1 << 20


def binary_body(arrays: dict[str, np.ndarray], **extra: object) -> tuple[bytes, dict[bytes, bytes]]:
    head = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape),
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()], **extra}
    js = orjson.dumps(head)
    return js + b"".join(a.tobytes() for a in arrays.values()), {HEADER_LENGTH: str(len(js)).encode()}


def test_binary_inputs_are_views_of_the_body() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)
    body, headers = binary_body({"a": a, "b": b}, id="r1", parameters={"k": 1})
    req = decode_request(body, headers, None, LIMIT)
    assert req.id == "r1" and req.parameters == {"k": 1} and req.outputs is None
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], b)
    # no copy: the array reads the request body in place
    assert req.inputs["a"].base is not None and not req.inputs["a"].flags.owndata


def test_json_response_and_binary_response() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT16", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    req = decode_request(body, {}, None, LIMIT)
    x = req.inputs["x"]
    assert x.dtype == np.int16 and x.shape == (2, 2)
    ctype, out, extra = encode_response("m", "1", req, outputs_of(x), None)
    assert ctype == b"application/json" and extra == b""
    assert orjson.loads(out)["outputs"] == [{"name": "output", "datatype": "INT16", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    req.binary_output = True
    ctype, out, extra = encode_response("m", "1", req, outputs_of({"y": x.T, "z": np.float16(1.5)}), None)
    n = int(extra.split(b": ")[1])
    head = orjson.loads(out[:n])
    assert ctype == b"application/octet-stream"
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [8, 2]
    np.testing.assert_array_equal(np.frombuffer(out[n:n + 8], np.int16).reshape(2, 2), x.T)
    assert np.frombuffer(out[n + 8:], np.float16)[0] == 1.5


def test_object_results_and_errors_map_to_statuses() -> None:
    with pytest.raises(InferError, match="cannot carry"):
        outputs_of(np.array(["a"], object))
    from shmserve.errors import RunnerOverloaded

    assert status_of(RunnerOverloaded("busy")).status == 503
    assert status_of(RunnerOverloaded("busy")).grpc_code_name == "UNAVAILABLE"
    assert status_of(TimeoutError("late")).status == 504
    assert status_of(ValueError("x")).status == 500


def test_region_references_need_client_shm() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                     "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]})
    with pytest.raises(InferError, match="--allow-client-shm"):
        decode_request(body, {}, None, LIMIT)


def test_grpc_codes_come_from_the_error_catalogue() -> None:
    grpc = pytest.importorskip("grpc")
    from shmserve.errors import CATALOGUE

    by_http: dict[int, set[str]] = {}
    for entry in CATALOGUE:
        if entry.api:  # every error an inference call can end with has its gRPC status
            assert entry.grpc_status, entry.exception.__name__
        if entry.grpc_status:
            assert hasattr(grpc.StatusCode, entry.grpc_status), entry.grpc_status
            by_http.setdefault(entry.http_status, set()).add(entry.grpc_status)
    assert all(len(codes) == 1 for codes in by_http.values()), by_http  # one gRPC code per HTTP status
    assert InferError(400, "x").grpc_code_name == "INVALID_ARGUMENT"
    assert InferError(404, "x").grpc_code_name == "NOT_FOUND"
    assert InferError(413, "x").grpc_code_name == "RESOURCE_EXHAUSTED"
    assert InferError(504, "x").grpc_code_name == "DEADLINE_EXCEEDED"
    assert InferError(500, "x").grpc_code_name == "INTERNAL"


def test_inputs_have_the_http_bodies_dimension_limit() -> None:
    from shmserve.tensors import HTTP

    def body(ndim: int) -> bytes:
        return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * ndim, "data": [1.0]}]})

    assert decode_request(body(HTTP.max_ndim), {}, None, LIMIT).inputs["x"].ndim == HTTP.max_ndim
    # one more is a clear 400 (past numpy's own limit it was a ValueError, answered as a crash)
    for ndim in (HTTP.max_ndim + 1, 70):
        with pytest.raises(InferError, match=f"up to {HTTP.max_ndim} dimensions") as err:
            decode_request(body(ndim), {}, None, LIMIT)
        assert err.value.status == 400
