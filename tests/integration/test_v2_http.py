"""The Open Inference Protocol over REST, spoken by tritonclient.http (sync and asyncio) to a live server."""
from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

from shmserve.oip.datatypes import DATATYPES  # noqa: E402

from .v2_server import GATE, MATHS, V2Server  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    srv = V2Server(Path(tmp_path_factory.mktemp("v2http")))
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.fixture
def client(server: V2Server) -> Iterator["httpclient.InferenceServerClient"]:
    c = httpclient.InferenceServerClient(server.url, concurrency=16)
    yield c
    c.close()


def tensor(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> "httpclient.InferInput":
    t = httpclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


def raw(server: V2Server, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_health_metadata_and_index(client: "httpclient.InferenceServerClient") -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "shmserve" and "binary_tensor_data" in meta["extensions"]
    api = client.get_model_metadata("predict")
    assert api["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert api["outputs"][0]["datatype"] == "FP32"
    pair = client.get_model_metadata(f"{MATHS}.pair", model_version="1")
    assert [t["name"] for t in pair["inputs"]] == ["a", "b"]
    assert client.is_model_ready(f"{MATHS}.predict") and client.is_model_ready("predict", "1")
    names = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert names["predict"] == "READY" and names[f"{MATHS}.pair"] == "READY" and f"{GATE}.sleep" in names
    assert client.get_model_config(f"{MATHS}.predict")["max_batch_size"] == 64
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.get_model_metadata("predict", model_version="7")


def test_infer_binary_and_json_tensors(client: "httpclient.InferenceServerClient") -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # tritonclient's defaults: binary input, binary outputs (binary_data_output)
    r = client.infer(f"{MATHS}.predict", [tensor("x", x, "FP32")], request_id="req-7")
    assert r.get_response()["id"] == "req-7"
    assert r.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(r.as_numpy("output"), x * 2)
    # JSON both ways, through the native API's descriptor
    r = client.infer("predict", [tensor("x", x, "FP32", binary=False)],
                     outputs=[httpclient.InferRequestedOutput("output", binary_data=False)])
    out = r.get_response()["outputs"][0]
    assert out["data"] == (x * 2).ravel().tolist() and out["shape"] == [2, 3]
    assert "id" not in r.get_response()
    # the API's descriptor still checks the shape
    with pytest.raises(InferenceServerException, match="expected shape"):
        client.infer("predict", [tensor("x", np.zeros((2, 4), np.float32), "FP32")])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(client: "httpclient.InferenceServerClient", binary: bool) -> None:
    rng = np.random.default_rng(0)
    for datatype, dtype in DATATYPES.items():
        if dtype.kind == "b":
            x = rng.integers(0, 2, (2, 5)).astype(bool)
        elif dtype.kind == "f":
            x = rng.standard_normal((2, 5)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = np.array([[info.min, info.max, 0, 1, 2], [3, 4, 5, 6, 7]], dtype)
        r = client.infer(f"{MATHS}.echo", [tensor("x", x, datatype, binary)],
                         outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)])
        out = r.as_numpy("output")
        assert r.get_response()["outputs"][0]["datatype"] == datatype
        assert out.dtype == dtype and out.shape == x.shape, datatype
        np.testing.assert_array_equal(out, x, err_msg=datatype)


def test_several_inputs_outputs_and_parameters(client: "httpclient.InferenceServerClient") -> None:
    a, b = np.array([1, 2, 3], np.int32), np.array([4, 5, 6], np.int32)
    r = client.infer(f"{MATHS}.pair", [tensor("a", a, "INT32"), tensor("b", b, "INT32", binary=False)],
                     outputs=[httpclient.InferRequestedOutput("product"), httpclient.InferRequestedOutput("sum")])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["product", "sum"]
    np.testing.assert_array_equal(r.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(r.as_numpy("product"), a * b)
    x = np.array([1.0, 2.0])
    r = client.infer(f"{MATHS}.scaled", [tensor("x", x, "FP64")], parameters={"factor": 3})
    np.testing.assert_array_equal(r.as_numpy("output"), x * 3)
    with pytest.raises(InferenceServerException, match="takes no parameter 'colour'"):
        client.infer(f"{MATHS}.scaled", [tensor("x", x, "FP64")], parameters={"colour": "red"})
    with pytest.raises(InferenceServerException, match="has no output 'nope'"):
        client.infer(f"{MATHS}.pair", [tensor("a", a, "INT32"), tensor("b", b, "INT32")],
                     outputs=[httpclient.InferRequestedOutput("nope")])


def test_method_that_raises_is_a_500(server: V2Server) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    status, headers, data = raw(server, "POST", f"/v2/models/{MATHS}.boom/infer", body)
    assert status == 500 and headers["content-type"] == "application/json"
    assert "model exploded" in orjson.loads(data)["error"]
    c = httpclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException, match="model exploded"):
            c.infer(f"{MATHS}.boom", [tensor("x", np.ones(1, np.float32), "FP32")])
        assert c.is_server_live()  # the worker keeps serving
    finally:
        c.close()


def test_asyncio_client_and_overload(server: V2Server) -> None:
    async def main() -> list[object]:
        c = aioclient.InferenceServerClient(server.url)
        try:
            assert await c.is_server_ready()
            x = np.ones((1, 3), np.float32)
            r = await c.infer(f"{MATHS}.predict", [tensor("x", x, "FP32")])
            np.testing.assert_array_equal(r.as_numpy("output"), x * 2)
            # gate admits one call at a time from this API worker: the second is overloaded
            t = np.array([0.5], np.float32)
            return await asyncio.gather(*(c.infer(f"{GATE}.sleep", [tensor("x", t, "FP32")]) for _ in range(2)),
                                        return_exceptions=True)
        finally:
            await c.close()

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) == 1, results
    assert errors[0].status() == "503" and "RunnerOverloaded" in errors[0].message()
    status, headers, _ = raw(server, "POST", f"/v2/models/{GATE}.sleep/infer",
                             orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}]}))
    assert status == 200


def test_v2_and_native_calls_join_the_same_batches(server: V2Server) -> None:
    """v2 callers of `tagged` (both as the API and as the runner method) batch with native POST /tagged."""
    x = np.ones((1, 1), np.float32)
    seen: dict[str, list[float]] = {"v2": [], "native": []}
    lock = threading.Lock()

    def v2_call() -> None:
        c = httpclient.InferenceServerClient(server.url)
        try:
            out = c.infer(f"{MATHS}.tagged", [tensor("x", x, "FP32")]).as_numpy("output")
        finally:
            c.close()
        with lock:
            seen["v2"].append(float(out[0, 0]))

    def native_call() -> None:
        status, _, body = raw(server, "POST", "/tagged", b"[[1.0]]", {"content-type": "application/json"})
        assert status == 200
        with lock:
            seen["native"].append(float(orjson.loads(body)[0][0]))

    for _ in range(5):  # concurrency is not timing-exact: retry a few rounds until a mixed batch shows
        seen = {"v2": [], "native": []}
        threads = [threading.Thread(target=f) for f in (v2_call, native_call) * 6]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(seen["v2"]) == 6 and len(seen["native"]) == 6
        if set(seen["v2"]) & set(seen["native"]):
            break
    else:
        pytest.fail(f"no batch held both a v2 and a native call: {seen}")
    _, _, metrics = raw(server, "GET", "/metrics")
    runner = re.escape(MATHS.encode())
    counts = re.findall(rb'shmserve_runner_batch_size_bucket\{le="1",method="tagged",runner="' + runner + rb'"\} (\S+)', metrics)
    total = re.findall(rb'shmserve_runner_batch_size_count\{method="tagged",runner="' + runner + rb'"\} (\S+)', metrics)
    assert counts and total and float(total[0]) > float(counts[0]), "no call of tagged was served in a batch > 1"


@pytest.mark.parametrize(("body", "headers", "message"), [
    (b"{not json", {}, "not valid JSON"),
    (b"[1, 2]", {}, "must be a JSON object"),
    (b'{"inputs": []}', {}, "needs 'inputs'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', {}, "holds 1 values"),
    (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', {}, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', {}, "BYTES is not supported"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', {}, "non-negative integers"),
    (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}]}', {}, "numbers of its datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}', {}, "numbers of its datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', {}, "has no 'data'"),
    (b'{"inputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1]}]}', {}, "no input named 'y'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5}', {}, "'id' must be a string"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}XXXX',
     {"Inference-Header-Content-Length": "auto"}, "ends after 4 of its 8 bytes"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}]}XXXXXXXX',
     {"Inference-Header-Content-Length": "auto"}, "does not match shape"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}XXXXXXXX',
     {"Inference-Header-Content-Length": "auto"}, "4 bytes of binary data follow"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "Inference-Header-Content-Length"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', {"Content-Encoding": "gzip"},
     "not valid gzip"),
])
def test_malformed_bodies_get_a_clear_400(server: V2Server, body: bytes, headers: dict[str, str],
                                          message: str) -> None:
    if headers.get("Inference-Header-Content-Length") == "auto":  # the JSON part ends at the inputs list
        headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
    status, resp_headers, data = raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", body, headers)
    assert status == 400, data
    assert resp_headers["content-type"] == "application/json"
    assert message in orjson.loads(data)["error"]


def test_routes_methods_and_compression(server: V2Server) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, 2]}]})
    # the path of an inference answered once is remembered: the same checks must still hold on it
    for _ in range(2):
        assert raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", body)[0] == 200
        assert raw(server, "GET", f"/v2/models/{MATHS}.echo/infer")[0] == 405
        status, _, data = raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", b"{not json")
        assert status == 400 and "error" in orjson.loads(data)
    status, _, data = raw(server, "GET", "/v2/nothing")
    assert status == 404 and "error" in orjson.loads(data)
    assert raw(server, "POST", "/v2/repository/models/predict/load")[0] == 400
    import gzip

    body = gzip.compress(orjson.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}))
    status, _, data = raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", body, {"Content-Encoding": "gzip"})
    assert status == 200 and orjson.loads(data)["outputs"][0]["data"] == [1, 2]
    status, _, data = raw(server, "POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "byte_size": 4}')
    assert status == 400 and "--allow-client-shm" in orjson.loads(data)["error"]
    # the native routes are untouched
    assert raw(server, "GET", "/livez")[0] == 200


def test_statistics(client: "httpclient.InferenceServerClient") -> None:
    x = np.ones((1, 3), np.float32)
    before = client.get_inference_statistics(f"{MATHS}.predict")["model_stats"][0]
    client.infer(f"{MATHS}.predict", [tensor("x", x, "FP32")])
    after = client.get_inference_statistics(f"{MATHS}.predict")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["inference_stats"]["compute_infer"]["count"] > before["inference_stats"]["compute_infer"]["count"]
    every = client.get_inference_statistics()["model_stats"]
    assert {"predict", f"{MATHS}.predict", f"{GATE}.sleep"} <= {m["name"] for m in every}
