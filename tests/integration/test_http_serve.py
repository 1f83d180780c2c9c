"""`shmserve serve` as a real subprocess on a free loopback port, spoken to with raw sockets.

One server (two API workers, shared-memory runners) serves most tests of this
module; `test_http_lifecycle.py` starts its own servers to stop, crash and kill.
"""
from __future__ import annotations

import io
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SERVICE_SOURCE = textwrap.dedent('''
    """Test service for the HTTP integration tests (written to a temp dir by the tests)."""
    import asyncio
    import os
    import time

    import numpy as np

    import shmserve
    from shmserve.errors import RunnerOverloaded
    from shmserve.io import JSON, NumpyNdarray, Text

    SUFFIX = os.environ["HTTP_TEST_SUFFIX"]


    class Scale(shmserve.Runnable):
        def __init__(self, factor=2.0):
            self.factor = factor

        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, x):
            return x * self.factor

        @shmserve.Runnable.method()
        def boom(self, x):
            raise ValueError("model exploded")

        @shmserve.Runnable.method()
        def pid(self, x):
            return os.getpid()

        @shmserve.Runnable.method()
        def sleep(self, x):
            time.sleep(float(x[0]))
            return x


    double = shmserve.Runner(Scale, name="double-" + SUFFIX, workers=1)
    triple = shmserve.Runner(Scale, name="triple-" + SUFFIX, runnable_init_params={"factor": 3.0}, workers=1)
    gate = shmserve.Runner(Scale, name="gate-" + SUFFIX, workers=1, max_queue_size=1)
    svc = shmserve.Service("http_test", runners=[double, triple, gate])


    @svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 3), enforce_shape=True), output=NumpyNdarray())
    async def predict(x):
        """Double a batch of 3-vectors."""
        return await double.predict.async_run(x)


    @svc.api(input=NumpyNdarray(dtype="float32"), output=JSON())
    async def chain(x):
        a, b = await asyncio.gather(double.predict.async_run(x), triple.predict.async_run(x))
        return {"a": a, "b": b, "c": await double.predict.async_run(b)}


    @svc.api(input=JSON(), output=JSON())
    def info(body):
        return {"echo": body, "pid": os.getpid()}


    @svc.api(input=Text(), output=Text(), route="/v1/upper")
    async def upper(text):
        return text.upper()


    @svc.api(input=JSON(), output=JSON())
    async def boom(body):
        return await double.boom.async_run(np.zeros(1, np.float32))


    @svc.api(input=JSON(), output=JSON())
    async def runner_pid(body):
        return await double.pid.async_run(np.zeros(1, np.float32))


    @svc.api(input=JSON(), output=JSON())
    async def gated(body):
        """Sleeps in a runner that takes one call at a time from each process: a second call is overloaded."""
        return await gate.sleep.async_run(np.array([body["seconds"]], np.float32))


    @svc.api(input=JSON(), output=JSON())
    async def deadline(body):
        return await triple.sleep.async_run(np.array([body["seconds"]], np.float32), timeout=body["timeout"])


    @svc.api(input=JSON(), output=JSON())
    async def wait(body):
        await asyncio.sleep(body["seconds"])
        return "waited"
''')


def shm_entries(pids: set[int] | None = None) -> set[str]:
    """shmserve names in /dev/shm; with `pids`, only those created by these processes.

    Names carry their creator's pid (``shmserve_<pid>_<random>``) or lease id
    (``shmserve_<16 hex>_<tag><random>``); a lease-named entry is ours when it carries
    this test session's name tag (``SHMSERVE_NAME_TAG``, inherited by the servers we
    start), which keeps other test runs on the same machine out of our checks.
    """
    names = {n for n in os.listdir("/dev/shm") if "shmserve_" in n}
    if pids is None:
        return names
    tag = os.environ.get("SHMSERVE_NAME_TAG", "")
    out = set()
    for n in names:
        m = re.search(r"shmserve_(\d+)_", n)
        if m is not None and int(m.group(1)) in pids:
            out.add(n)
        elif m is None and (not tag or f"_{tag}" in n):
            out.add(n)
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Server:
    """A `shmserve serve` subprocess on 127.0.0.1 with an OS-picked port."""

    def __init__(self, workdir: Path, *args: str, api_workers: int | None = 2, own_group: bool = False,
                 source: str = SERVICE_SOURCE) -> None:
        """Start the server of `source`; `own_group` puts it in a process group of its own, to be signalled as a whole."""
        (workdir / "http_test_service.py").write_text(source)
        self.workdir = workdir
        self.suffix = uuid.uuid4().hex[:8]
        self.shm_before = shm_entries()
        self.log_path = workdir / f"server-{self.suffix}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["HTTP_TEST_SUFFIX"] = self.suffix
        env.setdefault("OMP_NUM_THREADS", "1")
        self._log = open(self.log_path, "wb")
        self.family: set[int] = set()  # filled once started; stop() may run first, when the start fails
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmserve.cli", "serve", "http_test_service:svc", "--port", "0",
             *(["--api-workers", str(api_workers)] if api_workers is not None else []), "--log-level", "INFO", *args],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=self._log, start_new_session=own_group,
        )
        self.port = self._read_port(60.0)
        self.family = descendants(self.proc.pid)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = re.search(rb"http://127\.0\.0\.1:(\d+)", buf)
                if m:
                    return int(m.group(1))
        self.stop()
        raise AssertionError(f"server did not start: {buf!r}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api_worker_pids(self) -> dict[int, int]:
        return {int(i): int(p) for i, p in re.findall(r"API worker (\d+): pid (\d+)", self.log())}

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the server and check it left no process and no shared memory behind."""
        self.family |= descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()
        wait_until(lambda: not any(alive(p) for p in self.family), 10, "server processes to exit")
        pids = self.family | {self.proc.pid}
        wait_until(lambda: not (shm_entries(pids) - self.shm_before), 10, "shared memory to be removed")
        return code


# -- raw HTTP helpers -------------------------------------------------------------------------
def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """Read one content-length framed response; `buf` carries bytes across calls."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed mid-response: {bytes(buf)!r}")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    del buf[:len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        buf += chunk
    body = bytes(buf[:n])
    del buf[:n]
    return status, headers, body


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def call(server: Server, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with server.connect() as sock:
        sock.sendall(request(method, path, body, headers))
        return read_response(sock, bytearray())


def post_json(server: Server, path: str, obj: object) -> tuple[int, dict[str, str], object]:
    status, headers, body = call(server, "POST", path, orjson.dumps(obj), {"Content-Type": "application/json"})
    return status, headers, orjson.loads(body) if body else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http"), "--max-body-size", "1")
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()


# -- the APIs ----------------------------------------------------------------------------------
def test_predict_json(server: Server) -> None:
    status, headers, out = post_json(server, "/predict", [[1, 2, 3], [4, 5, 6]])
    assert status == 200 and headers["content-type"] == "application/json"
    assert out == [[2, 4, 6], [8, 10, 12]]


def test_predict_npy_and_octet_stream(server: Server) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = io.BytesIO()
    np.save(buf, x)
    status, headers, body = call(server, "POST", "/predict", buf.getvalue(),
                                 {"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), 2 * x)

    status, headers, body = call(server, "POST", "/predict", x.tobytes(), {
        "Content-Type": "application/octet-stream", "X-Tensor-Dtype": "float32", "X-Tensor-Shape": "2,3",
        "Accept": "application/octet-stream"})
    assert status == 200 and headers["x-tensor-shape"] == "2,3"
    np.testing.assert_array_equal(np.frombuffer(body, np.float32).reshape(2, 3), 2 * x)


def test_gather_and_sequential_calls_across_runners(server: Server) -> None:
    status, _, out = post_json(server, "/chain", [1, 2])
    assert status == 200 and out == {"a": [2, 4], "b": [3, 6], "c": [6, 12]}


def test_sync_and_text_apis(server: Server) -> None:
    status, _, out = post_json(server, "/info", {"k": [1]})
    assert status == 200 and out["echo"] == {"k": [1]} and set(server.api_worker_pids().values()) >= {out["pid"]}
    status, headers, body = call(server, "POST", "/v1/upper", "abc é".encode(), {"Content-Type": "text/plain"})
    assert (status, body) == (200, "ABC É".encode())


# -- every error case --------------------------------------------------------------------------
@pytest.mark.parametrize("raw, status, error", [
    (b"THIS IS NOT HTTP\r\n\r\n", 400, "Bad Request"),
    (request("POST", "/predict", b"[[1, 2, 3]", {"Content-Type": "application/json"}), 400, "InvalidInput"),
    (request("POST", "/predict", b"[[1, 2]]", {"Content-Type": "application/json"}), 400, "InvalidInput"),
    (request("POST", "/predict", b"\0" * 8, {"Content-Type": "application/octet-stream",
                                            "X-Tensor-Dtype": "float64"}), 400, "InvalidInput"),
    (request("POST", "/missing", b"{}"), 404, "NotFound"),
    (request("GET", "/predict"), 405, "MethodNotAllowed"),
    (request("POST", "/boom", b"{}"), 500, "RunnerError"),
])
def test_error_responses(server: Server, raw: bytes, status: int, error: str) -> None:
    with server.connect() as sock:
        sock.sendall(raw)
        got, headers, body = read_response(sock, bytearray())
    assert got == status, body
    payload = orjson.loads(body)
    assert payload["status"] == status and payload["error"] == error and payload["message"]


def test_runner_error_does_not_kill_anything(server: Server) -> None:
    pid_before = post_json(server, "/runner_pid", {})[2]
    status, _, out = post_json(server, "/boom", {})
    assert status == 500 and "model exploded" in out["message"] and "Traceback" not in out["message"]
    assert post_json(server, "/predict", [[1, 1, 1]])[0] == 200
    assert post_json(server, "/runner_pid", {})[2] == pid_before


def test_body_over_limit_is_413_before_the_body_is_sent(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        status, headers, body = read_response(sock, bytearray())
        assert status == 413 and headers["connection"] == "close" and b"max-body-size" in body
        assert sock.recv(10) == b""  # the server closed without reading the body


def test_overloaded_runner_is_503_with_retry_after(server: Server) -> None:
    # Two calls at once on one keep-alive-free connection each; they may land on different API
    # workers, so send from enough connections that two share a worker (max_queue_size=1 there).
    socks = [server.connect() for _ in range(6)]
    try:
        for s in socks:
            s.sendall(request("POST", "/gated", b'{"seconds": 0.5}', {"Content-Type": "application/json"}))
        results = [read_response(s, bytearray()) for s in socks]
    finally:
        for s in socks:
            s.close()
    statuses = sorted(r[0] for r in results)
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in results if r[0] == 503)
    assert busy[1]["retry-after"] == "1" and orjson.loads(busy[2])["error"] == "RunnerOverloaded"


def test_deadline_is_504(server: Server) -> None:
    status, _, out = post_json(server, "/deadline", {"seconds": 0.3, "timeout": 0.05})
    assert status == 504 and out["error"] == "RunnerTimeout"


# -- HTTP/1.1 features -------------------------------------------------------------------------
def test_keep_alive_and_pipelining(server: Server) -> None:
    with server.connect() as sock:
        buf = bytearray()
        # keep-alive: sequential requests on one connection
        for i in range(3):
            sock.sendall(request("POST", "/predict", b"[[%d, 0, 0]]" % i, {"Content-Type": "application/json"}))
            status, headers, body = read_response(sock, buf)
            assert status == 200 and orjson.loads(body) == [[2 * i, 0, 0]] and "connection" not in headers
        # pipelining: all at once, answered in order (a fast one queued behind a slow one)
        batch = [request("POST", "/wait", b'{"seconds": 0.2}')]
        batch += [request("POST", "/predict", b"[[%d, 1, 1]]" % i, {"Content-Type": "application/json"}) for i in range(5)]
        batch += [request("GET", "/livez"), request("POST", "/nope")]
        sock.sendall(b"".join(batch))
        got = [read_response(sock, buf) for _ in batch]
    assert [s for s, _, _ in got] == [200] * 7 + [404]
    assert orjson.loads(got[0][2]) == "waited"
    assert [orjson.loads(b)[0][0] for _, _, b in got[1:6]] == [0, 2, 4, 6, 8]
    assert got[6][2] == b"ok\n"


def test_chunked_body_with_expect_continue(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"5\r\n[[1, \r\n")
        sock.sendall(b"6\r\n2, 3]]\r\n0\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and orjson.loads(body) == [[2, 4, 6]]


def test_client_disconnect_mid_request_leaves_the_server_healthy(server: Server) -> None:
    for _ in range(4):
        with server.connect() as sock:
            sock.sendall(request("POST", "/gated", b'{"seconds": 0.3}', {"Content-Type": "application/json"}))
        # gone before the answer; the half-sent request case too:
        with server.connect() as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n[[1,")
    assert post_json(server, "/predict", [[1, 2, 3]])[0] == 200
    # A cancelled call frees its place in the runner's queue: /gated (max_queue_size 1) works again.
    deadline = time.monotonic() + 10
    while post_json(server, "/gated", {"seconds": 0})[0] != 200:
        assert time.monotonic() < deadline, "the runner queue slot was never freed"
        time.sleep(0.05)


# -- server endpoints --------------------------------------------------------------------------
def test_livez_readyz_docs(server: Server) -> None:
    assert call(server, "GET", "/livez")[:1] == (200,)
    assert call(server, "GET", "/readyz")[0] == 200
    status, headers, body = call(server, "GET", "/docs.json")
    doc = orjson.loads(body)
    assert status == 200 and doc["info"]["title"] == "http_test"
    assert {"/predict", "/chain", "/info", "/v1/upper", "/readyz", "/metrics"} <= set(doc["paths"])
    assert doc["paths"]["/predict"]["post"]["summary"] == "Double a batch of 3-vectors."


def test_metrics_on_the_same_worker(server: Server) -> None:
    with server.connect() as sock:  # one connection: one API worker answers both
        buf = bytearray()
        for _ in range(3):
            sock.sendall(request("POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json"}))
            assert read_response(sock, buf)[0] == 200
        sock.sendall(request("POST", "/predict", b"[[1]]", {"Content-Type": "application/json"}))
        assert read_response(sock, buf)[0] == 400
        sock.sendall(request("GET", "/metrics"))
        status, headers, body = read_response(sock, buf)
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    ok = re.search(r'shmserve_http_requests_total\{api="predict",status="200"\} (\d+)', text)
    bad = re.search(r'shmserve_http_requests_total\{api="predict",status="400"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 3 and bad and int(float(bad.group(1))) >= 1
    runner = f"double-{server.suffix}"
    count = re.search(rf'shmserve_runner_batch_size_count{{method="predict",runner="{runner}"}} (\S+)', text)
    assert count and float(count.group(1)) >= 3, text
    assert f'shmserve_runner_queue_wait_seconds_bucket{{le="+Inf",method="predict",runner="{runner}"}}' in text
    assert "shmserve_http_in_flight_requests" in text


def test_concurrent_clients(server: Server) -> None:
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with server.connect() as sock:
                buf = bytearray()
                for i in range(20):
                    sock.sendall(request("POST", "/predict", b"[[%d, %d, 1]]" % (k, i), {"Content-Type": "application/json"}))
                    status, _, body = read_response(sock, buf)
                    assert status == 200 and orjson.loads(body) == [[2 * k, 2 * i, 2]]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_second_server_with_the_same_runner_names_fails_clearly(server: Server) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HTTP_TEST_SUFFIX=server.suffix)
    out = subprocess.run([sys.executable, "-m", "shmserve.cli", "serve", "http_test_service:svc", "--port", "0"],
                         cwd=server.workdir, env=env, capture_output=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert b"RunnerNameClash" in out.stderr and b"already served by process" in out.stderr
    assert post_json(server, "/predict", [[1, 2, 3]])[0] == 200  # the first server is untouched


def test_metrics_sum_every_api_worker(server: Server) -> None:
    def total() -> int:
        text = call(server, "GET", "/metrics")[2].decode()
        m = re.search(r'shmserve_http_requests_total\{api="info",status="200"\} (\S+)', text)
        return int(float(m.group(1))) if m else 0

    before = total()
    pids: dict[int, int] = {}
    sent = 0
    while sent < 20 or (len(pids) < 2 and sent < 500):  # separate connections, until both workers served some
        status, _, out = post_json(server, "/info", {})
        assert status == 200
        pids[out["pid"]] = pids.get(out["pid"], 0) + 1
        sent += 1
    assert len(pids) == 2, "the kernel gave every connection to one API worker"
    # Each scrape sums the answering worker with the others' snapshots (refreshed once a second).
    wait_until(lambda: total() - before == sent, 10, f"the /metrics sum over both API workers ({pids})")


def test_traced_request_reports_its_timeline(server: Server) -> None:
    status, headers, body = call(server, "POST", "/predict", b"[[1, 2, 3]]",
                                 {"Content-Type": "application/json", "X-Shmserve-Trace": "1"})
    assert status == 200, body
    assert orjson.loads(body) == [[2, 4, 6]]
    t = orjson.loads(headers["x-shmserve-trace"])
    (runner,) = t["runners"]
    assert runner["method"] == "predict" and runner["batch_size"] >= 1
    path = [t["begin"], t["parsed"], t["decoded"], runner["submit"], runner["dequeue"], runner["batch_start"],
            runner["model_start"], runner["model_end"], runner["written"], runner["complete"], t["api_done"],
            t["encoded"]]
    assert path == sorted(path), path
    # without the header there is no trace
    status, headers, _ = call(server, "POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json"})
    assert status == 200 and "x-shmserve-trace" not in headers
