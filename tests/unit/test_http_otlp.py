"""The OTLP exporters, gRPC and HTTP, each against a fake collector in this process (threads, no processes).

The gRPC collector is a grpcio server implementing opentelemetry-proto's
``TraceService``; the HTTP one a stdlib server taking OTLP/HTTP protobuf
posts. Each gets the spans of one traced request with a runner call, and the
test checks what arrived: the span names, the parent/child shape, and the
incoming ``traceparent``'s trace ID (and parent span) on the wire.
"""
from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager

import pytest

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shmserve.config.schema import TracingSettings  # noqa: E402
from shmserve.http.tracing import Tracer  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
T = 1000.0
TIMELINE = {"begin": T, "parsed": T + 0.001, "decoded": T + 0.002, "api_done": T + 0.010, "encoded": T + 0.011,
            "runners": [("double", "predict", {"submit": T + 0.003, "dequeue": T + 0.004, "batch_start": T + 0.005,
                                               "model_start": T + 0.006, "model_end": T + 0.008,
                                               "written": T + 0.0085, "complete": T + 0.009, "batch_size": 4})]}
SHAPE = {"decode": "POST /predict", "encode": "POST /predict", "runner double.predict": "POST /predict",
         "queue": "runner double.predict", "batch": "runner double.predict", "model": "batch"}


def export_one(settings: TracingSettings) -> None:
    """The spans of one request carrying `TRACEPARENT`, through the exporter `settings` name."""
    tracer = Tracer(settings, "svc")
    parent = tracer.sample({b"traceparent": TRACEPARENT})
    tracer.export(parent, b"POST", b"/predict", "predict", 200, b"rid-otlp", TIMELINE, T + 0.012)
    tracer.shutdown()  # flushes the batch processor: the export has happened when this returns


def check(received: list[bytes]) -> None:
    assert received, "the collector got nothing"
    spans = [s for body in received for rs in ExportTraceServiceRequest.FromString(body).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans) == 7
    assert set(by_name) == {"POST /predict", *SHAPE}
    assert {s.trace_id.hex() for s in spans} == {TRACE_ID}
    assert by_name["POST /predict"].parent_span_id.hex() == PARENT_ID  # the caller's span is the parent
    ids = {s.span_id: s.name for s in spans}
    assert {name: ids[by_name[name].parent_span_id] for name in SHAPE} == SHAPE
    attrs = {a.key: a.value.string_value for a in by_name["model"].attributes}
    assert attrs["shmserve.request_id"] == "rid-otlp"


@contextmanager
def grpc_collector() -> Iterator[tuple[str, list[bytes]]]:
    grpc = pytest.importorskip("grpc")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received: list[bytes] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:  # noqa: N802
            received.append(request.SerializeToString())
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(None).wait(5)


@contextmanager
def http_collector() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            body = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("protocol, collector, module", [
    ("grpc", grpc_collector, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    ("http", http_collector, "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
])
def test_otlp_exporter_delivers_the_request_trace_to_a_collector(
        protocol: str, collector: Callable[[], object], module: str) -> None:
    pytest.importorskip(module)
    with collector() as (endpoint, received):  # type: ignore[attr-defined]
        export_one(TracingSettings(exporter="otlp", protocol=protocol, endpoint=endpoint))
    check(received)
