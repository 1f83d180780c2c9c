"""Quickstart: save a small torch model to the store, serve it over HTTP, ask it a question.

    python -m shmserve.examples.quickstart

1. saves a 784 -> 128 -> 10 torch MLP as ``quickstart_mlp`` in the model store
   (``$SHMSERVE_HOME``, default ``~/.shmserve``);
2. starts ``shmserve serve shmserve.examples.store_service:svc`` on a free
   loopback port (one API worker, one runner worker over shared memory);
3. POSTs one JSON request and one ``.npy`` request to ``/predict`` and checks
   the answers against the model called in this process;
4. stops the server with SIGTERM, which cleans up every shared-memory name.
"""
from __future__ import annotations

import http.client
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orjson


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, body: bytes, content_type: str, accept: str = "application/json") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": content_type, "Accept": accept})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def _left_behind(tag: str) -> set[str]:
    """shmserve names in /dev/shm that processes started with ``SHMSERVE_NAME_TAG=tag`` created."""
    from shmserve.shm.segment import owned_names

    return {n for names in owned_names().values() for n in names if n.split("_", 2)[2].startswith(tag)}


def main() -> int:
    import torch

    import shmserve

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    saved = shmserve.pytorch.save_model(
        "quickstart_mlp", model, signatures={"predict": {"batchable": True, "batch_dim": 0}},
        labels={"example": "quickstart"}, metadata={"hidden": 128},
    )
    print(f"1. saved {saved.tag} to the model store")

    tag = "q" + secrets.token_hex(3)  # marks every name the server creates, to check none is left
    port = _free_port()
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "shmserve.examples.store_service:svc",
           "--host", "127.0.0.1", "--port", str(port), "--api-workers", "1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "SHMSERVE_NAME_TAG": tag})
    try:
        t0 = time.monotonic()
        _wait_ready(port, proc)
        print(f"2. serving on http://127.0.0.1:{port} (ready in {time.monotonic() - t0:.1f} s)")

        x = np.random.default_rng(1).standard_normal((2, 784)).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        status, body = _post(port, orjson.dumps(x.tolist()), "application/json")
        got_json = np.asarray(orjson.loads(body), dtype=np.float32)
        print(f"3. POST /predict (JSON) -> {status}: {np.array2string(got_json[0], precision=3)}")
        buf = io.BytesIO()
        np.save(buf, x)
        status_npy, body_npy = _post(port, buf.getvalue(), "application/x-npy", accept="application/x-npy")
        got_npy = np.load(io.BytesIO(body_npy), allow_pickle=False)
        print(f"   POST /predict (.npy)  -> {status_npy}: shape {got_npy.shape}")
        ok = (status == 200 and status_npy == 200 and np.allclose(got_json, expected, atol=1e-4)
              and np.allclose(got_npy, expected, atol=1e-5))
        print(f"   matches the model called in-process: {ok}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    left = _left_behind(tag)
    print(f"4. stopped (exit {proc.returncode}); shared-memory names whose owner is gone: {len(left)}")
    return 0 if ok and proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
