"""The Open Inference Protocol over gRPC, spoken by tritonclient.grpc (sync and asyncio) to a live server."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
aioclient = pytest.importorskip("tritonclient.grpc.aio")
import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from shmserve.oip.datatypes import DATATYPES  # noqa: E402

from .v2_server import GATE, MATHS, V2Server  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    srv = V2Server(Path(tmp_path_factory.mktemp("v2grpc")), grpc=True, api_workers=2)
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.fixture
def client(server: V2Server) -> Iterator["grpcclient.InferenceServerClient"]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def tensor(name: str, arr: np.ndarray, datatype: str) -> "grpcclient.InferInput":
    t = grpcclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr)
    return t


def test_health_metadata_index_and_probe(server: V2Server, client: "grpcclient.InferenceServerClient") -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(f"{MATHS}.predict") and client.is_model_ready("predict", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "shmserve" and "statistics" in meta["extensions"]
    api = client.get_model_metadata("predict", as_json=True)
    assert api["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]
    names = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
    assert {"predict", f"{MATHS}.pair", f"{GATE}.sleep"} <= names
    config = client.get_model_config(f"{MATHS}.predict", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    with pytest.raises(InferenceServerException, match="no model named 'nope'") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with grpc.insecure_channel(server.grpc_url) as channel:  # what a Kubernetes gRPC probe sends
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_infer_every_datatype(client: "grpcclient.InferenceServerClient") -> None:
    rng = np.random.default_rng(1)
    for datatype, dtype in DATATYPES.items():
        if dtype.kind == "b":
            x = rng.integers(0, 2, (3, 2)).astype(bool)
        elif dtype.kind == "f":
            x = rng.standard_normal((3, 2)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = np.array([[info.min, info.max], [0, 1], [2, 3]], dtype)
        r = client.infer(f"{MATHS}.echo", [tensor("x", x, datatype)], request_id=f"id-{datatype}")
        assert r.get_response().id == f"id-{datatype}"
        out = r.as_numpy("output")
        assert out.dtype == dtype and out.shape == x.shape, datatype
        np.testing.assert_array_equal(out, x, err_msg=datatype)


def test_several_inputs_outputs_parameters_and_errors(client: "grpcclient.InferenceServerClient") -> None:
    a, b = np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)
    r = client.infer(f"{MATHS}.pair", [tensor("a", a, "FP32"), tensor("b", b, "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("sum"), grpcclient.InferRequestedOutput("product")])
    np.testing.assert_array_equal(r.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(r.as_numpy("product"), a * b)
    r = client.infer(f"{MATHS}.scaled", [tensor("x", a, "FP32")], parameters={"factor": 2.5})
    np.testing.assert_array_equal(r.as_numpy("output"), a * 2.5)
    with pytest.raises(InferenceServerException, match="model exploded") as info:
        client.infer(f"{MATHS}.boom", [tensor("x", a, "FP32")])
    assert info.value.status() == "StatusCode.INTERNAL"
    with pytest.raises(InferenceServerException, match="no input named 'y'") as info:
        client.infer(f"{MATHS}.echo", [tensor("y", a, "FP32")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_malformed_requests_are_invalid_argument(server: V2Server) -> None:
    def infer(request: service_pb2.ModelInferRequest) -> grpc.RpcError:
        with grpc.insecure_channel(server.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as err:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        return err.value

    def request(datatype: str = "FP32", shape: tuple[int, ...] = (2,), raw: list[bytes] | None = None
                ) -> service_pb2.ModelInferRequest:
        req = service_pb2.ModelInferRequest(model_name=f"{MATHS}.echo")
        req.inputs.add(name="x", datatype=datatype, shape=list(shape))
        req.raw_input_contents.extend([b"\0" * 8] if raw is None else raw)
        return req

    for req, message in [
        (request(raw=[b"\0" * 6]), "does not match shape"),
        (request(raw=[]), "has no data"),
        (request(raw=[b"\0" * 8, b"\0" * 8]), "not claimed by any input"),
        (request(datatype="BYTES"), "BYTES is not supported"),
        (request(shape=(-2,)), "non-negative integers"),
    ]:
        err = infer(req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), err.details()
    typed = service_pb2.ModelInferRequest(model_name=f"{MATHS}.echo")
    t = typed.inputs.add(name="x", datatype="INT32", shape=[3])
    t.contents.int_contents.extend([1, 2, 3])
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, timeout=10)
    assert np.frombuffer(reply.raw_output_contents[0], np.int32).tolist() == [1, 2, 3]


def test_asyncio_client_overload_and_statistics(server: V2Server) -> None:
    async def main() -> list[object]:
        c = aioclient.InferenceServerClient(server.grpc_url)
        try:
            assert await c.is_server_ready()
            x = np.ones((2, 3), np.float32)
            r = await c.infer("predict", [tensor("x", x, "FP32")])
            np.testing.assert_array_equal(r.as_numpy("output"), x * 2)
            stats = await c.get_inference_statistics("predict", as_json=True)
            assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) >= 1
            # gate admits one call at a time per API worker: of 4 concurrent calls over one
            # channel (one API worker serves a channel) at least one is overloaded
            t = np.array([0.5], np.float32)
            return await asyncio.gather(*(c.infer(f"{GATE}.sleep", [tensor("x", t, "FP32")]) for _ in range(4)),
                                        return_exceptions=True)
        finally:
            await c.close()

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert errors and all(e.status() == "StatusCode.UNAVAILABLE" for e in errors), results
    assert "RunnerOverloaded" in errors[0].message()


def test_model_stream_infer_answers_each_request_and_errors_per_request(server: V2Server) -> None:
    import queue

    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        # a slow request first (3 s, on a runner of its own): the ones behind it are answered without waiting
        client.async_stream_infer(f"{GATE}.sleep", [tensor("x", np.array([3.0], np.float32), "FP32")],
                                  request_id="slow")
        for i in range(5):
            client.async_stream_infer(f"{MATHS}.predict", [tensor("x", x + i, "FP32")], request_id=f"ok-{i}")
        client.async_stream_infer(f"{MATHS}.boom", [tensor("x", x, "FP32")], request_id="boom")
        client.async_stream_infer(f"{MATHS}.echo", [tensor("y", x, "FP32")], request_id="badinput")
        client.async_stream_infer("no-such-model", [tensor("x", x, "FP32")], request_id="nomodel")
        client.async_stream_infer(f"{MATHS}.predict", [tensor("x", x + 9, "FP32")], request_id="after-errors")
        got: list[tuple[object, object]] = [answers.get(timeout=60) for _ in range(10)]
    finally:
        client.stop_stream()
        client.close()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = sorted(str(e) for r, e in got if e is not None)
    assert set(results) == {"slow", "after-errors", *(f"ok-{i}" for i in range(5))}, (results, errors)
    for i in range(5):
        np.testing.assert_array_equal(results[f"ok-{i}"].as_numpy("output"), (x + i) * 2)
    np.testing.assert_array_equal(results["after-errors"].as_numpy("output"), (x + 9) * 2)
    ids = [r.get_response().id if e is None else "" for r, e in got]
    assert ids.index("slow") > ids.index("ok-0")  # answered as each finished, not in request order
    assert len(errors) == 3
    assert "request 'badinput'" in errors[0] and "no input named 'y'" in errors[0], errors
    assert "request 'boom'" in errors[1] and "model exploded" in errors[1], errors
    assert "request 'nomodel'" in errors[2] and "no-such-model" in errors[2], errors


def test_model_stream_infer_with_the_asyncio_client(server: V2Server) -> None:
    x = np.ones((1, 3), np.float32)

    async def main() -> list[tuple[object, object]]:
        c = aioclient.InferenceServerClient(server.grpc_url)

        async def requests() -> "AsyncIterator[dict[str, object]]":
            for i in range(4):
                yield {"model_name": f"{MATHS}.predict", "inputs": [tensor("x", x * i, "FP32")], "request_id": f"a{i}"}
            yield {"model_name": f"{MATHS}.boom", "inputs": [tensor("x", x, "FP32")], "request_id": "a-boom"}

        try:
            return [item async for item in c.stream_infer(requests())]
        finally:
            await c.close()

    got = asyncio.run(main())
    ok = {r.get_response().id: r.as_numpy("output") for r, e in got if e is None}
    assert sorted(ok) == ["a0", "a1", "a2", "a3"]
    for i in range(4):
        np.testing.assert_array_equal(ok[f"a{i}"], x * i * 2)
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1 and "model exploded" in str(errors[0])
