"""Access log, request IDs, spans, API keys, CORS and runner-worker metrics on a real server.

One ``shmserve serve --config shmserve.yaml`` (one API worker, shared-memory
runners) with every feature on.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_http_serve import Server, read_response, wait_until

pytestmark = pytest.mark.integration
pytest.importorskip("opentelemetry.sdk.trace")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
KEY = "integration-key-1"

CONFIG = """
api_server:
  logging:
    access: {enabled: true, format: json}
  http:
    cors: {enabled: true, access_control_allow_origins: ["https://app.example"]}
  auth: {api_key: integration-key-1}
tracing: {exporter: console, sample_rate: 0.0}
"""


class ConfiguredServer(Server):
    """`Server` (one API worker) started with a ``shmserve.yaml`` that turns every feature on."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "shmserve.yaml").write_text(CONFIG)
        super().__init__(workdir, "--config", str(workdir / "shmserve.yaml"), api_workers=1)

    def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, dict[str, str], bytes]:
        with self.connect() as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
                         + body)
            return read_response(sock, bytearray())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfiguredServer]:
    s = ConfiguredServer(tmp_path_factory.mktemp("operable"))
    yield s
    s.stop()


AUTH = f"X-API-Key: {KEY}\r\n"


def test_key_request_id_cors_and_access_log_with_runner_time(server: ConfiguredServer) -> None:
    status, headers, body = server.request("POST", "/predict", b"[[1, 2, 3]]", AUTH + "X-Request-ID: int-1\r\n"
                                           "Origin: https://app.example\r\n")
    assert status == 200 and orjson.loads(body) == [[2, 4, 6]]
    assert headers["x-request-id"] == "int-1" and headers["access-control-allow-origin"] == "https://app.example"
    status, _, body = server.request("POST", "/predict", b"[[1, 2, 3]]", "X-Request-ID: int-401\r\n")
    assert status == 401 and orjson.loads(body)["request_id"] == "int-401"
    assert server.request("GET", "/livez")[0] == 200

    def logged() -> dict | None:
        for line in server.log().splitlines():
            if line.startswith("{") and '"request_id":"int-1"' in line:
                return orjson.loads(line)
        return None

    wait_until(lambda: logged() is not None, 10, "the access log line")
    entry = logged()
    assert entry is not None and entry["status"] == 200 and entry["path"] == "/predict"
    assert 0 < entry["runner_ms"] <= entry["duration_ms"] and entry["client"].startswith("127.0.0.1:")


def test_a_sampled_traceparent_yields_spans_across_the_runner_call(server: ConfiguredServer) -> None:
    tp = f"traceparent: 00-{TRACE_ID}-b7ad6b7169203331-01\r\n"
    status, _, _ = server.request("POST", "/predict", b"[[1, 2, 3]]", AUTH + tp + "X-Request-ID: int-span\r\n")
    assert status == 200
    # Spans leave in batches (the console exporter writes them to the server log).
    def spans() -> list[dict]:
        return [orjson.loads(line.split(": ", 1)[1]) for line in server.log().splitlines()
                if "shmserve.tracing:" in line and TRACE_ID in line]

    wanted = {"POST /predict", "decode", "queue", "batch", "model", "encode"}
    # The batch span processor may write them in more than one batch.
    wait_until(lambda: wanted <= {s["name"] for s in spans()}, 15, "the spans of the traced request")
    got = {s["name"]: s for s in spans()}
    assert any(n.startswith("runner double-") for n in got)
    assert all(s["attributes"]["shmserve.request_id"] == "int-span" for s in got.values())
    assert got["POST /predict"]["parent_id"] == "0xb7ad6b7169203331"


def test_the_request_id_reaches_the_runner_calls_timeline(server: ConfiguredServer) -> None:
    """``X-Shmserve-Trace``: the request's ID on the timeline and on each shared-memory runner call in it."""
    status, headers, _ = server.request("POST", "/predict", b"[[1, 2, 3]]",
                                        AUTH + "X-Shmserve-Trace: 1\r\nX-Request-ID: int-trace\r\n")
    assert status == 200 and headers["x-request-id"] == "int-trace"
    timeline = orjson.loads(headers["x-shmserve-trace"])
    (call,) = timeline["runners"]
    assert timeline["request_id"] == call["request_id"] == "int-trace"
    assert call["runner"] == f"double-{server.suffix}" and call["submit"] <= call["model_start"] <= call["complete"]


def test_metrics_show_the_runner_workers_own_batches(server: ConfiguredServer) -> None:
    for _ in range(3):
        assert server.request("POST", "/predict", b"[[1, 2, 3], [4, 5, 6]]", AUTH)[0] == 200
    assert server.request("GET", "/metrics")[0] == 401

    def batches() -> float:
        _, _, text = server.request("GET", "/metrics", headers=AUTH)
        for fam in text_string_to_metric_families(text.decode()):
            if fam.name == "shmserve_runner_worker_batches":
                return sum(s.value for s in fam.samples if s.labels["runner"] == f"double-{server.suffix}"
                           and s.labels["method"] == "predict" and s.name.endswith("_total"))
        return 0.0

    wait_until(lambda: batches() >= 3, 10, "runner worker snapshots with the batches")
    _, _, text = server.request("GET", "/metrics", headers=AUTH)
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    assert {"shmserve_runner_worker_batch_size", "shmserve_runner_worker_queue_depth", "shmserve_runner_worker_restarts",
            "shmserve_runner_worker_shm_bytes", "shmserve_dev_shm_free_bytes", "shmserve_build_info"} <= names


def test_a_killed_runner_worker_shows_as_a_restart(server: ConfiguredServer) -> None:
    import os
    import signal

    status, _, body = server.request("POST", "/runner_pid", b"{}", AUTH)
    assert status == 200
    os.kill(int(orjson.loads(body)), signal.SIGKILL)

    def restarts() -> float:
        _, _, text = server.request("GET", "/metrics", headers=AUTH)
        for fam in text_string_to_metric_families(text.decode()):
            if fam.name == "shmserve_runner_worker_restarts":
                return sum(s.value for s in fam.samples if s.labels["runner"] == f"double-{server.suffix}")
        return 0.0

    wait_until(lambda: restarts() >= 1, 20, "the restarted worker to report its restart")
    # The first call after the kill may get 503 while the API worker re-attaches.
    wait_until(lambda: server.request("POST", "/predict", b"[[1, 2, 3]]", AUTH)[0] == 200, 20, "a call served again")
