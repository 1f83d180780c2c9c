"""The API application on an event loop, fed through HttpProtocol with a fake transport.

Runners are bound with init_local (in-process), so no process or shared memory is used.
"""
from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

import shmserve
from shmserve.errors import RunnerError, RunnerOverloaded, RunnerTimeout, RunnerUnavailable, TensorTooLarge
from shmserve.http.app import App, runner_ready
from shmserve.http.openapi import build_openapi
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON, NumpyNdarray, Text
from tests.unit.test_http_protocol import FakeTransport, post, responses


class Scale(shmserve.Runnable):
    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * self.factor


def build_service() -> tuple[shmserve.Service, list[shmserve.Runner], dict]:
    double = shmserve.Runner(Scale, name="double")
    triple = shmserve.Runner(Scale, name="triple", runnable_init_params={"factor": 3.0})
    svc = shmserve.Service("test_svc", runners=[double, triple])
    gate: dict = {"event": None, "started": None, "release": threading.Event()}

    @svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 3), enforce_shape=True), output=NumpyNdarray())
    async def predict(x: np.ndarray) -> np.ndarray:
        """Double the input."""
        return await double.predict.async_run(x)

    @svc.api(input=NumpyNdarray(dtype="float32"), output=JSON())
    async def both(x: np.ndarray) -> dict:
        a, b = await asyncio.gather(double.predict.async_run(x), triple.predict.async_run(x))
        c = await double.predict.async_run(b)
        return {"a": a, "b": b, "c": c}

    @svc.api(input=JSON(), output=JSON())
    def sync_info(body: object) -> dict:
        return {"thread": threading.current_thread().name, "body": body}

    @svc.api(input=JSON(), output=JSON())
    def blocking(body: dict) -> str:
        gate["release"].wait(5)  # a plain function may block: it runs in the thread pool
        return "released"

    @svc.api(input=Text(), output=Text(), route="/v1/upper")
    async def upper(text: str) -> str:
        return text.upper()

    @svc.api(input=JSON(), output=JSON())
    async def fail(body: dict) -> None:
        errors = {
            "overloaded": RunnerOverloaded("queue of runner 'double' is full"),
            "unavailable": RunnerUnavailable("no live worker"),
            "timeout": RunnerTimeout("deadline passed"),
            "model": RunnerError("model raised ValueError: boom", "ValueError", "Traceback ...secret..."),
            "large": TensorTooLarge("too large for the arena"),
            "bug": ZeroDivisionError("division by zero"),
        }
        raise errors[body["kind"]]

    @svc.api(input=JSON(), output=NumpyNdarray())
    async def unencodable(body: object) -> object:
        return np.array([{"a": 1}], dtype=object)

    @svc.api(input=JSON(), output=JSON(), timeout=0.05)
    async def slow(body: object) -> None:
        await asyncio.sleep(5)

    @svc.api(input=JSON(), output=JSON())
    async def wait(body: object) -> str:
        gate["started"].set()
        await gate["event"].wait()
        return "done"

    return svc, [double, triple], gate


class Harness:
    def __init__(self, **app_options: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.svc, self.runners, self.gate = build_service()
        for r in self.runners:
            r.init_local()
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="api-pool")
        self.app = App(self.svc, executor=self.executor, version="test", **app_options)  # type: ignore[arg-type]
        self.state = ServerState(max_body_bytes=1 << 20)
        self.state.on_response = self.app.on_response

    def connect(self) -> tuple[HttpProtocol, FakeTransport]:
        proto = HttpProtocol(self.app, self.state)
        tr = FakeTransport()
        proto.connection_made(tr)
        return proto, tr

    def exchange(self, raw: bytes, count: int = 1) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        proto, tr = self.connect()

        async def run() -> None:
            proto.data_received(raw)
            for _ in range(500):
                if _complete(tr.data) >= count:
                    return
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(run())
        return responses(tr.data)

    def close(self) -> None:
        for r in self.runners:
            r._unbind()
        self.app.close()
        self.executor.shutdown()
        self.loop.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def _complete(data: bytes) -> int:
    try:
        return len(responses(data))
    except (AssertionError, ValueError):
        return 0


def test_predict_with_json_body(h: Harness) -> None:
    (status, headers, body), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"Content-Type: application/json\r\n"))
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert orjson.loads(body) == [[2, 4, 6]]


def test_predict_with_npy_body_and_npy_response(h: Harness) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = io.BytesIO()
    np.save(buf, x)
    (status, headers, body), = h.exchange(post(b"/predict", buf.getvalue(),
                                               b"Content-Type: application/x-npy\r\nAccept: application/x-npy\r\n"))
    assert status == 200 and headers[b"content-type"] == b"application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), x * 2)


def test_predict_with_octet_stream_body(h: Harness) -> None:
    x = np.ones((1, 3), np.float32)
    (status, headers, body), = h.exchange(post(b"/predict", x.tobytes(),
                                               b"Content-Type: application/octet-stream\r\nX-Tensor-Dtype: float32\r\n"
                                               b"X-Tensor-Shape: 1,3\r\nAccept: application/octet-stream\r\n"))
    assert status == 200 and headers[b"x-tensor-shape"] == b"1,3" and headers[b"x-tensor-dtype"] == b"<f4"
    np.testing.assert_array_equal(np.frombuffer(body, np.float32), [2, 2, 2])


def test_gather_and_sequential_calls_across_two_runners_of_one_runnable(h: Harness) -> None:
    (status, _, body), = h.exchange(post(b"/both", b"[1, 2]"))
    assert status == 200 and orjson.loads(body) == {"a": [2, 4], "b": [3, 6], "c": [6, 12]}


def test_sync_api_runs_in_the_thread_pool(h: Harness) -> None:
    (status, _, body), = h.exchange(post(b"/sync_info", b'{"k": 1}'))
    assert status == 200
    out = orjson.loads(body)
    assert out["body"] == {"k": 1} and out["thread"].startswith("api-pool")


def test_text_api_on_a_custom_route(h: Harness) -> None:
    (status, headers, body), = h.exchange(post(b"/v1/upper", "héllo".encode()))
    assert (status, body) == (200, "HÉLLO".encode()) and headers[b"content-type"].startswith(b"text/plain")


@pytest.mark.parametrize("raw, status, error", [
    (post(b"/predict", b"[[1, 2]]"), 400, "InvalidInput"),
    (post(b"/predict", b"[[1, 2, 3]"), 400, "InvalidInput"),
    (post(b"/predict", b"x", b"Content-Type: image/png\r\n"), 415, "UnsupportedMediaType"),
    (post(b"/nope", b""), 404, "NotFound"),
    (b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "MethodNotAllowed"),
    (post(b"/livez", b""), 405, "MethodNotAllowed"),
    (post(b"/fail", b'{"kind": "overloaded"}'), 503, "RunnerOverloaded"),
    (post(b"/fail", b'{"kind": "unavailable"}'), 503, "RunnerUnavailable"),
    (post(b"/fail", b'{"kind": "timeout"}'), 504, "RunnerTimeout"),
    (post(b"/fail", b'{"kind": "model"}'), 500, "RunnerError"),
    (post(b"/fail", b'{"kind": "large"}'), 413, "TensorTooLarge"),
    (post(b"/fail", b'{"kind": "bug"}'), 500, "ZeroDivisionError"),
    (post(b"/slow", b"{}"), 504, "TimeoutError"),
    (post(b"/unencodable", b"{}", b"Accept: application/x-npy\r\n"), 500, "RuntimeError"),
])
def test_errors_are_json_with_the_mapped_status(h: Harness, raw: bytes, status: int, error: str) -> None:
    (got_status, headers, body), = h.exchange(raw)
    assert got_status == status
    payload = orjson.loads(body)
    assert payload["status"] == status and payload["error"] == error and payload["message"]
    assert (b"retry-after" in headers) == (status == 503)
    if status == 405:
        assert b"allow" in headers


def test_runner_error_hides_the_remote_traceback_and_the_server_keeps_serving(h: Harness) -> None:
    (status, _, body), ok = h.exchange(post(b"/fail", b'{"kind": "model"}') + post(b"/predict", b"[[1, 1, 1]]"), 2)
    assert status == 500 and b"secret" not in body and b"boom" in body
    assert ok[0] == 200


def test_keep_alive_and_pipelining_through_the_app(h: Harness) -> None:
    raw = b"".join(post(b"/predict", b"[[%d, 0, 0]]" % i) for i in range(5)) + post(b"/nope", b"")
    got = h.exchange(raw, 6)
    assert [s for s, _, _ in got] == [200] * 5 + [404]
    assert [orjson.loads(b)[0][0] for _, _, b in got[:5]] == [0, 2, 4, 6, 8]


def test_disconnect_cancels_the_api_task(h: Harness) -> None:
    proto, tr = h.connect()

    async def run() -> None:
        h.gate["event"] = asyncio.Event()
        h.gate["started"] = asyncio.Event()
        proto.data_received(post(b"/wait", b"{}"))
        await asyncio.wait_for(h.gate["started"].wait(), 2)
        assert h.app.in_flight == 1
        task = proto.task
        proto.connection_lost(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task is not None and task.cancelled()
        assert h.app.in_flight == 0

    h.loop.run_until_complete(run())
    assert tr.data == b""
    assert 'shmserve_http_requests_total{api="wait",status="499"} 1.0' in h.app.metrics.render().decode()


def test_server_endpoints(h: Harness) -> None:
    got = h.exchange(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p
                              for p in (b"/livez", b"/readyz", b"/docs.json")), 3)
    assert [s for s, _, _ in got] == [200, 200, 200]
    doc = orjson.loads(got[2][2])
    assert doc["openapi"].startswith("3.") and "/predict" in doc["paths"] and "/v1/upper" in doc["paths"]


def test_readyz_is_503_while_a_runner_is_unbound(h: Harness) -> None:
    h.runners[1]._unbind()
    (status, headers, body), = h.exchange(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and b"triple" in body and b"retry-after" in headers
    assert not runner_ready(h.runners[1]) and runner_ready(h.runners[0])


def test_runner_ready_asks_the_backend() -> None:
    class Backend:
        def __init__(self, n: int) -> None:
            self.n = n

        def ready(self) -> bool:
            return self.n > 0

    class FakeRunner:
        _backend: object = None

    r = FakeRunner()
    assert not runner_ready(r)
    r._backend = Backend(0)
    assert not runner_ready(r)
    r._backend = Backend(2)
    assert runner_ready(r)


def test_metrics_count_requests_latency_in_flight_and_runner_traces(h: Harness) -> None:
    h.exchange(post(b"/predict", b"[[1, 2, 3]]") + post(b"/predict", b"[[1]]"), 2)
    h.app.metrics.on_trace("double", "predict", {
        "submit": 1.0, "dequeue": 1.001, "batch_start": 1.001, "model_start": 1.002,
        "model_end": 1.004, "written": 1.0041, "complete": 1.005, "batch_size": 8,
    })
    (status, headers, body), = h.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    text = body.decode()
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    assert 'shmserve_http_requests_total{api="predict",status="200"} 1.0' in text
    assert 'shmserve_http_requests_total{api="predict",status="400"} 1.0' in text
    assert 'shmserve_http_request_duration_seconds_count{api="predict",status="200"} 1.0' in text
    assert "shmserve_http_in_flight_requests 0.0" in text
    assert 'shmserve_runner_batch_size_bucket{le="8",method="predict",runner="double"} 1.0' in text
    assert 'shmserve_runner_batch_size_bucket{le="4",method="predict",runner="double"} 0.0' in text
    assert 'shmserve_runner_queue_wait_seconds_bucket{le="0.0025",method="predict",runner="double"} 1.0' in text
    assert 'shmserve_runner_queue_wait_seconds_bucket{le="0.001",method="predict",runner="double"} 0.0' in text


def test_metrics_registry_is_per_app_not_global() -> None:
    from prometheus_client import REGISTRY

    a, b = Harness(), Harness()
    try:
        a.exchange(post(b"/predict", b"[[1, 2, 3]]"))
        assert 'api="predict",status="200"} 1.0' in a.app.metrics.render().decode()
        assert 'api="predict",status="200"} 0.0' in b.app.metrics.render().decode()
        assert REGISTRY.get_sample_value("shmserve_http_requests_total", {"api": "predict", "status": "200"}) is None
    finally:
        a.close()
        b.close()


def test_openapi_document_describes_apis_and_headers() -> None:
    svc, _, _ = build_service()
    doc = build_openapi(svc, "1.2")
    op = doc["paths"]["/predict"]["post"]
    assert op["operationId"] == "predict" and op["summary"] == "Double the input."
    assert set(op["requestBody"]["content"]) == {"application/json", "application/octet-stream", "application/x-npy"}
    assert {p["name"] for p in op["parameters"]} == {"X-Request-ID", "X-Tensor-Dtype", "X-Tensor-Shape"}
    assert op["requestBody"]["content"]["application/json"]["schema"]["items"]["maxItems"] == 3
    assert {"400", "413", "503", "504", "500"} <= set(op["responses"])
    assert doc["paths"]["/v1/upper"]["post"]["requestBody"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert doc["info"] == {"title": "test_svc", "version": "1.2", "description": "shmserve service 'test_svc'"}
    assert {"/livez", "/readyz", "/metrics", "/docs.json"} <= set(doc["paths"])
    orjson.dumps(doc)  # serializable


def test_metrics_exchange_sums_peer_workers_and_keeps_dead_ones(tmp_path) -> None:
    from shmserve.http.metrics import Metrics, MetricsExchange

    me = Metrics("svc", lambda: 1, MetricsExchange(tmp_path, pid=os.getpid()))
    peer = Metrics("svc", lambda: 5, MetricsExchange(tmp_path, pid=2**22 + 12345))  # no such pid: a dead worker
    me.observe_request("predict", 200, 0.001)
    for _ in range(3):
        peer.observe_request("predict", 200, 0.002)
    peer.observe_request("predict", 503, 0.0)
    peer.on_trace("r", "predict", {"submit": 1.0, "model_start": 1.001, "model_end": 1.002, "complete": 1.003,
                                   "batch_size": 4})
    peer.publish()
    me.publish()
    text = me.render().decode()
    assert 'shmserve_http_requests_total{api="predict",status="200"} 4.0' in text
    assert 'shmserve_http_requests_total{api="predict",status="503"} 1.0' in text
    assert 'shmserve_runner_batch_size_count{method="predict",runner="r"} 1.0' in text
    assert "shmserve_http_in_flight_requests 1.0" in text  # the dead peer's in-flight is not counted
    # The peer's own view sums ours too (and our pid is alive, so our in-flight counts).
    text = peer.render().decode()
    assert 'shmserve_http_requests_total{api="predict",status="200"} 4.0' in text
    assert "shmserve_http_in_flight_requests 6.0" in text


def test_a_blocking_sync_api_does_not_stall_other_connections(h: Harness) -> None:
    slow, slow_tr = h.connect()
    fast, fast_tr = h.connect()

    async def run() -> None:
        slow.data_received(post(b"/blocking", b"{}"))
        fast.data_received(post(b"/predict", b"[[1, 1, 1]]"))
        for _ in range(400):
            if fast_tr.data:
                break
            await asyncio.sleep(0.005)
        assert responses(fast_tr.data)[0][0] == 200 and slow_tr.data == b""
        h.gate["release"].set()
        for _ in range(400):
            if slow_tr.data:
                break
            await asyncio.sleep(0.005)

    h.loop.run_until_complete(run())
    assert orjson.loads(responses(slow_tr.data)[0][2]) == "released"
