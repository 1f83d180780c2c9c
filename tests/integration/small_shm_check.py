"""Run inside a private mount namespace whose /dev/shm is a small tmpfs (see test_small_shm.py).

    python tests/integration/small_shm_check.py refuse   # /dev/shm too small: clear errors, no SIGBUS
    python tests/integration/small_shm_check.py serve    # the example service starts and answers

Prints one JSON line of findings; the test judges them.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "examples.service_mlp:svc", "--host", "127.0.0.1",
           "--port", str(port), "--api-workers", "1", "--startup-timeout", "60"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, {"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _finish(proc: subprocess.Popen[bytes], out: dict[str, object], timeout: float) -> None:
    """Wait for the server to exit (killing it after `timeout`); record its exit code and output."""
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
    out["serve_code"] = proc.returncode
    out["serve_output"] = text.decode(errors="replace")[-4000:]


def refuse() -> dict[str, object]:
    from shmserve.errors import SharedMemoryTooSmall
    from shmserve.shm.segment import Segment

    out: dict[str, object] = {}
    # A segment larger than the tmpfs: refused while reserving, before anything is mapped.
    try:
        seg = Segment.create(32 * 2**20)
    except SharedMemoryTooSmall as exc:
        out["segment_error"] = str(exc)
    else:
        seg.unlink()
        seg.close()
        out["segment_error"] = None
    _finish(_serve(_free_port()), out, 60)
    return out


def serve() -> dict[str, object]:
    port = _free_port()
    proc = _serve(port)
    out: dict[str, object] = {"ready": False}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    out["ready"] = True
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if out["ready"]:
            status, body = _request(port, "POST", "/predict", orjson.dumps([[0.1] * 784, [0.2] * 784]))
            out["predict_status"] = status
            out["predict_shape"] = [len(body and orjson.loads(body) or []), len(orjson.loads(body)[0])] \
                if status == 200 else None
    finally:
        proc.send_signal(signal.SIGTERM)
        _finish(proc, out, 30)
    out["shm_left"] = sorted(n for n in os.listdir("/dev/shm") if "shmserve" in n)
    return out


if __name__ == "__main__":
    result = {"refuse": refuse, "serve": serve}[sys.argv[1]]()
    print(orjson.dumps(result).decode())
