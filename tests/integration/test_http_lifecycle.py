"""`shmserve serve` lifecycle: graceful shutdown, crashed API workers, killed runner workers."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.integration.test_http_serve import (
    ROOT,
    Server,
    alive,
    call,
    descendants,
    post_json,
    read_response,
    request,
    shm_entries,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_sigterm_lets_in_flight_requests_finish_then_cleans_up(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=1)
    with srv.connect() as sock:
        sock.sendall(request("POST", "/wait", b'{"seconds": 0.5}'))
        wait_until(lambda: _in_flight(srv) >= 1, 10, "the request to be in flight")
        srv.proc.send_signal(signal.SIGTERM)
        status, headers, body = read_response(sock, bytearray())
        assert (status, orjson.loads(body)) == (200, "waited")
        assert headers.get("connection") == "close"  # no more keep-alive while draining
    assert srv.stop() == 0
    assert "got SIGTERM" in srv.log()


def _in_flight(srv: Server) -> int:
    with srv.connect() as sock:
        sock.sendall(request("GET", "/metrics"))
        text = read_response(sock, bytearray())[2].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("shmserve_http_in_flight_requests "))
    return int(float(line.split()[1]))


def test_sigint_stops_everything_too(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=2)
    assert post_json(srv, "/predict", [[1, 2, 3]])[0] == 200
    assert srv.stop(signal.SIGINT) == 0


def test_a_crashed_api_worker_is_restarted(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=1)
    try:
        old = srv.api_worker_pids()[0]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: srv.api_worker_pids().get(0, old) != old, 30, "a new API worker")
        new = srv.api_worker_pids()[0]
        wait_until(lambda: _serves(srv), 30, "the restarted worker to serve")
        assert post_json(srv, "/info", {})[2]["pid"] == new
        assert "exited with code -9; restarting it" in srv.log()
        srv.family.add(new)
    finally:
        assert srv.stop() == 0


def _serves(srv: Server) -> bool:
    try:
        return call(srv, "GET", "/livez")[0] == 200
    except OSError:
        return False


def test_killed_runner_worker_fails_fast_with_503_then_recovers(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=1)
    try:
        victim = post_json(srv, "/runner_pid", {})[2]
        assert isinstance(victim, int) and alive(victim)
        stop = threading.Event()
        results: list[tuple[float, int, float]] = []  # (sent at, status, seconds taken)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_predict_load, args=(srv, stop, results, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(results) > 50, 30, "load to build up")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: any(s == 503 for _, s, _ in list(results)), 10, "a 503")
        first_503 = min(t for t, s, _ in list(results) if s == 503)
        wait_until(lambda: sum(1 for t, s, _ in list(results) if s == 200 and t > first_503) >= 20, 30,
                   "successes after the restart")
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[0]
        statuses = {s for _, s, _ in results}
        assert statuses <= {200, 503}, statuses
        # No request hung: every answer around the kill came within a few seconds.
        assert max(d for t, _, d in results if t >= killed_at - 1) < 5.0
        assert post_json(srv, "/runner_pid", {})[2] != victim
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 200, 10, "readiness after the restart")
    finally:
        assert srv.stop() == 0


def _predict_load(srv: Server, stop: threading.Event, results: list, errors: list) -> None:
    try:
        with srv.connect() as sock:
            buf = bytearray()
            while not stop.is_set():
                t0 = time.monotonic()
                sock.sendall(request("POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json"}))
                status, _, _ = read_response(sock, buf)
                results.append((t0, status, time.monotonic() - t0))
    except BaseException as exc:
        errors.append(exc)


def test_local_runners_use_no_shared_memory(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--local-runners", api_workers=1)
    try:
        assert post_json(srv, "/chain", [1])[2] == {"a": [2], "b": [3], "c": [6]}
        assert not shm_entries(srv.family | descendants(srv.proc.pid) | {srv.proc.pid})
    finally:
        assert srv.stop() == 0


def test_bad_service_spec_fails_clearly(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "shmserve.cli", "serve", "no_such_module_q:svc", "--port", "0"],
                         cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"cannot import service module 'no_such_module_q'" in out.stderr


def test_readyz_recovers_after_a_runner_worker_restart_without_traffic(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=1)
    try:
        # The pid from the supervisor's log, not from an API call: this API worker makes no call at all.
        m = re.search(rf"runner 'double-{srv.suffix}' workers: pids \[(\d+)", srv.log())
        assert m, srv.log()
        victim = int(m.group(1))
        assert call(srv, "GET", "/readyz")[0] == 200
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), 10, "the runner worker to die")
        # Only probes, no API calls: readiness itself must notice the restarted worker.
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 200, 30, "/readyz to recover")
        assert post_json(srv, "/runner_pid", {})[2] != victim
    finally:
        assert srv.stop() == 0
