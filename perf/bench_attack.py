"""Slow-client attacks: honest-client latency with and without them, and how long attack connections live.

    python -m perf.bench_attack                                        # this tree
    python -m perf.bench_attack --tree /path/to/old/checkout --tree .  # side by side, one run

Each ``--tree`` (a checkout whose ``shmserve`` the server imports) serves
``examples/service_mlp.py`` with one API worker. Against each, in the same run
so the machine's load is the same for all, four phases of ``--seconds`` each:

* ``none``: honest clients only: ``--honest`` keep-alive connections, each sending
  one-row ``POST /predict`` (raw float32) one after the other;
* ``slowloris``: also ``--attackers`` connections that send a request line, then a
  header line a second, never ending the headers;
* ``slow_body``: attackers that send complete headers with ``Content-Length: 1 MB``,
  then one body byte a second;
* ``slow_reader``: ``--slow-readers`` attackers with a 4 KiB receive buffer that
  pipeline 1200 ``GET /docs.json`` requests (~6 MB of answers) and never read.
  Serving those answers is real work (it stalls honest clients while buffers
  fill), so there are fewer of them than of the other attackers.

The attackers run in a process of their own, so the honest clients' loop is
not slowed by theirs (the two still share the machine's CPUs).

An attacker whose connection the server closes opens a new one at once, so the
pressure stays at ``--attackers`` connections. Figures per phase: honest p50/p99
(ms), honest requests that failed, attack connections the server closed and
their lifetime (p50, max), and those still open at the end. A tree whose
``shmserve serve`` has ``--header-timeout`` is run with ``--header-timeout``,
``--body-timeout`` and ``--send-timeout`` set to ``--deadline-s`` (defaults are
10/60/30 s; shorter here so the phase sees them pass). Figures go to
``perf/results/attack_<stamp>.json``. The machine may be shared and noisy: read
the ratios within one run, not absolute figures across runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .env import REPO, THREAD_ENV
from .procs import free_port, stop, wait_http
from .stats import percentiles
from .trees import compare_trees, tree_parser

PHASES = ("none", "slowloris", "slow_body", "slow_reader")
_DOCS = b"GET /docs.json HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
_TCP_ESTABLISHED = 1


def _predict_request() -> bytes:
    body = np.ones((1, 784), np.float32).tobytes()
    return (b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n"
            b"x-tensor-dtype: float32\r\nx-tensor-shape: 1,784\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def _supports(tree: Path, flag: str) -> bool:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-m", "shmserve.cli", "serve", "--help"], env=env, cwd=tree, capture_output=True,
                         text=True, timeout=60)
    return flag in out.stdout


def _start(tree: Path, deadline_s: float, log: Path) -> tuple[subprocess.Popen, int, bool]:
    port = free_port()
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(REPO / "examples")])
    env["SHMSERVE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="shs-attack-")  # runner 'mlp' may run elsewhere too
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "service_mlp:svc", "--host", "127.0.0.1",
           "--port", str(port), "--api-workers", "1"]
    deadlines = _supports(tree, "--header-timeout")
    if deadlines:
        cmd += ["--header-timeout", str(deadline_s), "--body-timeout", str(deadline_s), "--send-timeout", str(deadline_s)]
    proc = subprocess.Popen(cmd, cwd=REPO / "examples", env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"the server of {tree} did not get ready:\n{log.read_text(errors='replace')[-3000:]}") from None
    return proc, port, deadlines


def _established(sock: socket.socket) -> bool:
    """False once the server has closed or reset the connection (we may not read, so ask TCP)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return struct.unpack("B", info[:1])[0] == _TCP_ESTABLISHED


class Attack:
    """`count` connections of one kind, reopened when the server closes them, for as long as `running`."""

    def __init__(self, kind: str, port: int, count: int) -> None:
        self.kind, self.port, self.count = kind, port, count
        self.lifetimes: list[float] = []  # seconds from connect to the server's close
        self.open = 0
        self.running = True

    async def run(self) -> None:
        await asyncio.gather(*(self._one(i) for i in range(self.count)))

    async def _one(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(i * 0.002)  # a ramp, not a burst of SYNs
        while self.running:
            sock = socket.socket()
            if self.kind == "slow_reader":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
            except OSError:
                sock.close()
                await asyncio.sleep(0.1)
                continue
            opened = time.monotonic()
            self.open += 1
            try:
                self._send(sock, self._first())
                tick = 0
                while self.running and _established(sock):
                    await asyncio.sleep(0.25)  # notice the close within 0.25 s; trickle once a second
                    tick += 1
                    if self.running and tick % 4 == 0:
                        self._send(sock, self._trickle())
                if self.running:
                    self.lifetimes.append(time.monotonic() - opened)
            finally:
                self.open -= 1
                sock.close()

    def _first(self) -> bytes:
        if self.kind == "slowloris":
            return b"GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        if self.kind == "slow_body":
            return b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n["
        return _DOCS * 1200  # ~6 MB of answers: more than the kernel's buffers hold (4 MB)

    def _trickle(self) -> bytes:
        return {"slowloris": b"x-a: b\r\n", "slow_body": b"1"}.get(self.kind, b"")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # the server stopped reading: that is the attack
        except OSError:
            pass  # reset: _established() sees it


async def _honest(port: int, seconds: float, out: list[float], failures: list[int]) -> None:
    raw = _predict_request()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
        except (OSError, asyncio.TimeoutError):
            failures[0] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                writer.write(raw)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 10.0)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures[0] += 1
                else:
                    out.append((time.perf_counter() - t0) * 1e3)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            failures[0] += 1
        finally:
            writer.close()


async def _attack_main(kind: str, port: int, count: int, seconds: float) -> dict[str, Any]:
    """The attacker process: `count` connections of `kind` for `seconds`, then their lifetimes."""
    attack = Attack(kind, port, count)
    task = asyncio.create_task(attack.run())
    await asyncio.sleep(count * 0.002 + 1.0)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    attack.running = False
    still_open = attack.open
    await asyncio.wait_for(task, 15.0)
    life = attack.lifetimes
    return {"attack_closed": len(life), "attack_still_open": still_open,
            "attack_life_p50_s": float(np.median(life)) if life else None,
            "attack_life_max_s": max(life) if life else None}


async def _phase(kind: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    attacker = None
    if kind != "none":
        # In a process of its own, so that its hundreds of sockets do not slow the honest client's loop.
        count = args.attackers if kind != "slow_reader" else args.slow_readers
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "perf.bench_attack", "--attack", kind, "--port", str(port),
            "--attackers", str(count), "--seconds", str(args.seconds + 0.5), cwd=REPO,
            stdout=asyncio.subprocess.PIPE)
        assert attacker.stdout is not None
        line = await asyncio.wait_for(attacker.stdout.readline(), 60.0)
        assert line.strip() == b"ready", line
    latencies: list[float] = []
    failures = [0]
    await asyncio.gather(*(_honest(port, args.seconds, latencies, failures) for _ in range(args.honest)))
    result: dict[str, Any] = {"honest": len(latencies), "honest_failed": failures[0]}
    result.update({f"honest_{k}_ms": v for k, v in percentiles(latencies).items() if k in ("p50", "p99")})
    if attacker is not None:
        out, _ = await asyncio.wait_for(attacker.communicate(), 60.0)
        result.update(orjson.loads(out.splitlines()[-1]))
    return result


def run_tree(tree: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every phase against the `shmserve` of `tree`."""
    proc, port, deadlines = _start(tree, args.deadline_s, logs / f"attack_{abs(hash(str(tree))) % 10**6}.log")
    try:
        phases = {kind: asyncio.run(_phase(kind, port, args)) for kind in PHASES}
    finally:
        stop(proc, group=True)
    return {"tree": str(tree), "deadlines": deadlines, "phases": phases}


def table(runs: list[dict[str, Any]]) -> str:
    """Each figure of each tree side by side; honest p50 under attack as a ratio to no attack."""
    names = [Path(r["tree"]).name or r["tree"] for r in runs]
    lines = ["| phase | figure | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(runs)]
    keys = ["honest", "honest_failed", "honest_p50_ms", "honest_p99_ms", "p50_vs_none", "attack_closed",
            "attack_still_open", "attack_life_p50_s", "attack_life_max_s"]
    for phase in PHASES:
        for key in keys:
            cells = []
            for r in runs:
                ph = r["phases"][phase]
                v = ph.get(key)
                if key == "p50_vs_none":
                    base = r["phases"]["none"].get("honest_p50_ms")
                    v = ph["honest_p50_ms"] / base if base and ph.get("honest_p50_ms") else None
                cells.append("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v))
            if any(c != "-" for c in cells):
                lines.append(f"| {phase} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--attackers", type=int, default=500, help="attack connections during each attack phase")
    parser.add_argument("--honest", type=int, default=2, help="honest keep-alive clients")
    parser.add_argument("--slow-readers", type=int, default=10,
                        help="attack connections in the slow-reader phase (each asks for ~6 MB of answers)")
    parser.add_argument("--deadline-s", type=float, default=2.0, help="header/body/send timeout given to the server")
    parser.add_argument("--attack", choices=PHASES[1:], help=argparse.SUPPRESS)  # the attacker process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        print(orjson.dumps(asyncio.run(_attack_main(args.attack, args.port, args.attackers, args.seconds))).decode())
        return 0
    return compare_trees("attack", args, run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
