"""Graceful shutdown under load: requests dropped per SIGTERM, to the supervisor and to the process group.

    python -m perf.bench_shutdown                                        # this tree
    python -m perf.bench_shutdown --tree /path/to/old/checkout --tree .  # side by side, one run

Each trial starts a small service (two API workers, in a process group of its
own) from a ``--tree``: its API waits ``--api-ms`` then calls a runner, so that
a request in flight when the signal comes was sent well before it, and a
runner worker that stops too early fails it. ``--clients`` kept-alive
connections each keep ``--depth`` pipelined requests outstanding; after
``--warmup-s`` the supervisor or the whole process group (as systemd does) gets
SIGTERM. Meanwhile a prober opens a new connection every 20 ms and sends a
request on it. Per trial:

* ``dropped``: requests sent *before* the signal that got no answer (the
  connection closed first): these a graceful stop must answer;
* ``failed``: answers to those requests other than 200 (a 503 from a runner
  worker stopped too early);
* ``late_unanswered``: requests sent after the signal on a connection whose last
  answer said ``connection: close`` (HTTP/1.1 clients retry those);
* ``new_refused`` / ``new_dropped``: new connections after the signal that were
  refused at once, or accepted and then closed or reset without an answer.

Trees run in turn within one run, so the machine's load is comparable; it
may be shared and noisy. Figures go to ``perf/results/shutdown_<stamp>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from .env import THREAD_ENV
from .procs import free_port, stop, wait_http
from .trees import compare_trees, tree_parser

MODES = ("supervisor", "group")

SERVICE = textwrap.dedent('''
    """An API that waits, then calls a runner: in-flight requests at a signal need both to live on."""
    import asyncio
    import os

    import numpy as np

    import shmserve
    from shmserve.io import NumpyNdarray

    API_S = float(os.environ["SHUTDOWN_API_MS"]) / 1e3


    class Double(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, x):
            return x * 2


    double = shmserve.Runner(Double, name="shutdown_double", workers=1)
    svc = shmserve.Service("shutdown_bench", runners=[double])


    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(x):
        await asyncio.sleep(API_S)
        return await double.predict.async_run(x)
''')


def _predict_request() -> bytes:
    body = np.ones((1, 8), np.float32).tobytes()
    return (b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n"
            b"x-tensor-dtype: float32\r\nx-tensor-shape: 1,8\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def _start(tree: Path, workdir: Path, api_ms: float, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (workdir / "shutdown_service.py").write_text(SERVICE)
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(workdir)])
    env["SHMSERVE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="shs-shutdown-", dir=workdir)  # removed with the run's scratch
    env["SHUTDOWN_API_MS"] = str(api_ms)
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "shutdown_service:svc", "--host", "127.0.0.1",
           "--port", str(port), "--api-workers", "2"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
    except Exception:
        stop(proc, group=True)
        raise RuntimeError(f"the server of {tree} did not get ready:\n{log.read_text(errors='replace')[-3000:]}") from None
    return proc, port


class Trial:
    """One server, its load, one signal, and what every request got."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port, self.args = port, args
        self.signal_at = float("inf")
        self.counts = {"sent_before": 0, "dropped": 0, "failed": 0, "late_unanswered": 0,
                       "new_refused": 0, "new_dropped": 0, "new_answered": 0}

    async def client(self) -> None:
        raw = _predict_request()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return
        pending: list[float] = []  # send times of requests not answered yet, oldest first
        closing = False
        try:
            for _ in range(self.args.depth):
                self._send(writer, raw, pending)
            while pending:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 30.0)
                sent = pending.pop(0)
                if sent < self.signal_at and not head.startswith(b"HTTP/1.1 200"):
                    self.counts["failed"] += 1
                if b"connection: close" in head.lower():
                    closing = True
                if not closing:
                    self._send(writer, raw, pending)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
            pass
        finally:
            writer.close()
        for sent in pending:
            self.counts["dropped" if sent < self.signal_at else "late_unanswered"] += 1

    def _send(self, writer: asyncio.StreamWriter, raw: bytes, pending: list[float]) -> None:
        now = time.monotonic()
        writer.write(raw)
        pending.append(now)
        if now < self.signal_at:
            self.counts["sent_before"] += 1

    async def prober(self, until: float) -> None:
        raw = _predict_request()
        while time.monotonic() < until:
            await asyncio.sleep(0.02)
            if time.monotonic() < self.signal_at:
                continue
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 2.0)
            except ConnectionRefusedError:
                self.counts["new_refused"] += 1
                continue
            except (OSError, asyncio.TimeoutError):
                self.counts["new_dropped"] += 1
                continue
            try:
                writer.write(raw)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                self.counts["new_answered" if head else "new_dropped"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                self.counts["new_dropped"] += 1
            finally:
                writer.close()


async def _trial(proc: subprocess.Popen, port: int, mode: str, args: argparse.Namespace) -> dict[str, int]:
    trial = Trial(port, args)
    clients = [asyncio.create_task(trial.client()) for _ in range(args.clients)]
    await asyncio.sleep(args.warmup_s)
    trial.signal_at = time.monotonic()
    if mode == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    probe = asyncio.create_task(trial.prober(trial.signal_at + 2.0))
    await asyncio.wait_for(asyncio.gather(*clients), 60.0)
    await probe
    return trial.counts


def run_tree(tree: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every mode, `args.trials` times, against the `shmserve` of `tree`."""
    results: dict[str, Any] = {"tree": str(tree), "modes": {}}
    for mode in MODES:
        trials = []
        for k in range(args.trials):
            proc, port = _start(tree, logs, args.api_ms, logs / f"shutdown_{mode}_{k}_{os.getpid()}.log")
            try:
                trials.append(asyncio.run(_trial(proc, port, mode, args)))
                proc.wait(60)
            finally:
                stop(proc, group=True)
        results["modes"][mode] = trials
    return results


def table(runs: list[dict[str, Any]]) -> str:
    """Per tree and mode: dropped per trial (each trial), and the other counts summed over trials."""
    names = [Path(r["tree"]).name or r["tree"] for r in runs]
    lines = ["| mode | figure | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(runs)]
    for mode in MODES:
        lines.append(f"| {mode} | dropped per trial | " +
                     " | ".join(",".join(str(t["dropped"]) for t in r["modes"][mode]) for r in runs) + " |")
        for key in ("sent_before", "failed", "late_unanswered", "new_refused", "new_dropped", "new_answered"):
            lines.append(f"| {mode} | {key} (all trials) | " +
                         " | ".join(str(sum(t[key] for t in r["modes"][mode])) for r in runs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__)
    parser.add_argument("--trials", type=int, default=3, help="SIGTERM trials per mode and tree")
    parser.add_argument("--clients", type=int, default=8, help="kept-alive client connections")
    parser.add_argument("--depth", type=int, default=2, help="pipelined requests each client keeps outstanding")
    parser.add_argument("--warmup-s", type=float, default=1.5, help="seconds of load before the signal")
    parser.add_argument("--api-ms", type=float, default=100.0, help="how long the API waits before its runner call")
    return compare_trees("shutdown", parser.parse_args(argv), run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
