"""Attacks on a server: honest-client latency with and without each, and how long attack connections live.

    python -m perf.bench_attack --rounds 3                             # this tree, three interleaved rounds
    python -m perf.bench_attack --tree /path/to/old/checkout --tree .  # side by side, one run
    python -m perf.bench_attack --phases slow_reader,cpu_control      # only these attacks (and none)

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
  fill), so there are fewer of them than of the other attackers;
* ``unterminated_headers``: attackers that send a request line and then one
  header value 4 KiB every 0.25 s, never ending it (the server answers 431 at
  its header limit and closes);
* ``connection_storm``: ``--storm-rate`` connections a second opened and closed
  at once, half of them after sending half a request line;
* ``zero_rows``: ``--flood-rate`` requests a second, on a few kept-alive
  connections, of a valid zero-row tensor (``x-tensor-shape: 0,784``, empty body);
* ``malformed``: ``--flood-rate`` requests a second of bad bodies in turn (JSON
  cut short, strings for numbers, wrong shapes, a ``.npy`` of impossible shape,
  an unknown dtype, bad chunked framing), each answered 400 (or closed);
* ``cpu_control``: no attack, only a process that burns ``--control-cpu`` of a
  core (about what an attacker process uses), so the latency that an attack's
  load on a small shared machine adds, whatever the server does, can be read off.

The attackers run in a process of their own, so the honest clients' loop is
not slowed by theirs (the two still share the machine's CPUs).

An attacker whose connection the server closes opens a new one at once, so the
pressure stays at ``--attackers`` connections. Figures per phase: honest p50/p99
(ms), honest requests that failed, attack connections the server closed and
their lifetime (p50, max), and those still open at the end; for the floods and
the storm, the attack requests or connections made and the statuses answered;
and the CPU share (of one core) the API worker and the attacker process used
during the phase, so a latency change can be told apart from the attack's own
load on a shared machine.
``--rounds N`` runs every tree's phases N times, trees taking turns, and the
table gives each figure's median with its range over the rounds (``p50_vs_none``
is each round's ratio to the mean of that round's two ``none`` phases, one before
the attacks and one after; each round takes the attacks in another order). A tree whose
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
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .env import REPO, THREAD_ENV
from .procs import cpu_seconds, free_port, stop, wait_http
from .stats import percentiles
from .trees import compare_trees, tree_parser

PHASES = ("none", "slowloris", "slow_body", "slow_reader", "unterminated_headers", "connection_storm", "zero_rows",
          "malformed", "cpu_control")
_SLOW = ("slowloris", "slow_body", "slow_reader", "unterminated_headers")
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


def _start(tree: Path, deadline_s: float, log: Path, runtime: Path) -> tuple[subprocess.Popen, int, bool, int | None]:
    port = free_port()
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(REPO / "examples")])
    runtime.mkdir(mode=0o700)
    env["SHMSERVE_RUNTIME_DIR"] = str(runtime)  # runner 'mlp' may run elsewhere too; removed with the run's scratch
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "service_mlp:svc", "--host", "127.0.0.1",
           "--port", str(port), "--api-workers", "1"]
    if _supports(tree, "--log-level"):
        cmd += ["--log-level", "INFO"]  # the log names the API worker's pid
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
    found = re.search(r"API worker \d+: pid (\d+)", log.read_text(errors="replace"))
    return proc, port, deadlines, int(found.group(1)) if found else None


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
                    if self.running and (tick % 4 == 0 or self.kind == "unterminated_headers"):
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
        if self.kind == "unterminated_headers":
            return b"GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\nx-long: "
        return _DOCS * 1200  # ~6 MB of answers: more than the kernel's buffers hold (4 MB)

    def _trickle(self) -> bytes:
        return {"slowloris": b"x-a: b\r\n", "slow_body": b"1", "unterminated_headers": b"a" * 4096}.get(self.kind, b"")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # the server stopped reading: that is the attack
        except OSError:
            pass  # reset: _established() sees it


def _post(body: bytes, ctype: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: %s\r\n%scontent-length: %d\r\n\r\n%s"
            % (ctype, extra, len(body), body))


_ZERO_ROWS = _post(b"", b"application/octet-stream", b"x-tensor-dtype: float32\r\nx-tensor-shape: 0,784\r\n")
_IMPOSSIBLE_NPY = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904)}"
_MALFORMED = (
    _post(b"[[0.5, 1", b"application/json"),
    _post(b'[["nan", "inf"]]', b"application/json"),
    _post(b"[[1, 2, 3]]", b"application/json"),  # 3 columns where 784 are declared
    _post(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(_IMPOSSIBLE_NPY)) + _IMPOSSIBLE_NPY, b"application/x-npy"),
    _post(b"\0" * 16, b"application/octet-stream", b"x-tensor-dtype: bogus\r\n"),
    b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",  # 400 and close
)


class Flood:
    """`rate` attack requests (or connections, for the storm) a second, for as long as `running`."""

    def __init__(self, kind: str, port: int, rate: float) -> None:
        self.kind, self.port, self.rate = kind, port, rate
        self.sent = 0
        self.statuses: dict[str, int] = {}
        self.running = True

    async def run(self) -> None:
        if self.kind == "connection_storm":
            await asyncio.gather(*(self._storm(i) for i in range(8)))
        else:
            await asyncio.gather(*(self._requests(i) for i in range(4)))

    async def _paced(self, lanes: int) -> None:
        await asyncio.sleep(lanes / self.rate)

    async def _storm(self, lane: int) -> None:
        half = b"GET /livez HT"
        while self.running:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5.0)
                self.sent += 1
                if self.sent % 2:
                    writer.write(half)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                self.statuses["connect_failed"] = self.statuses.get("connect_failed", 0) + 1
            await self._paced(8)

    async def _requests(self, lane: int) -> None:
        reader = writer = None
        while self.running:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5.0)
                except (OSError, asyncio.TimeoutError):
                    self.statuses["connect_failed"] = self.statuses.get("connect_failed", 0) + 1
                    await asyncio.sleep(0.1)
                    continue
            assert reader is not None
            raw = _ZERO_ROWS if self.kind == "zero_rows" else _MALFORMED[self.sent % len(_MALFORMED)]
            self.sent += 1
            try:
                writer.write(raw)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 10.0)
                status = head[9:12].decode()
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                self.statuses["closed"] = self.statuses.get("closed", 0) + 1
                writer.close()
                writer = None
            await self._paced(4)
        if writer is not None:
            writer.close()


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


def _cpu(pid: int | None) -> float | None:
    """CPU seconds `pid` has used, or None."""
    if pid is None:
        return None
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


async def _control_main(share: float, seconds: float) -> dict[str, Any]:
    """The control process: busy `share` of each 20 ms for `seconds`, touching no server."""
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        busy_until = time.monotonic() + 0.02 * share
        while time.monotonic() < busy_until:
            pass
        await asyncio.sleep(0.02 * (1 - share))
    return {}


async def _flood_main(kind: str, port: int, rate: float, seconds: float) -> dict[str, Any]:
    """The attacker process of a flood or storm: `rate` a second for `seconds`, then what was answered."""
    flood = Flood(kind, port, rate)
    task = asyncio.create_task(flood.run())
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    flood.running = False
    await asyncio.wait_for(task, 15.0)
    return {"attack_sent": flood.sent, "attack_statuses": flood.statuses}


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


async def _phase(kind: str, port: int, args: argparse.Namespace, api_pid: int | None) -> dict[str, Any]:
    attacker = None
    if kind != "none":
        # In a process of its own, so that its hundreds of sockets do not slow the honest client's loop.
        count = {"slow_reader": args.slow_readers, "connection_storm": args.storm_rate,
                 "cpu_control": int(args.control_cpu * 100)}.get(kind, args.flood_rate if kind not in _SLOW else args.attackers)
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "perf.bench_attack", "--attack", kind, "--port", str(port),
            "--attackers", str(count), "--seconds", str(args.seconds + 0.5), cwd=REPO,
            stdout=asyncio.subprocess.PIPE)
        assert attacker.stdout is not None
        line = await asyncio.wait_for(attacker.stdout.readline(), 60.0)
        assert line.strip() == b"ready", line
    latencies: list[float] = []
    failures = [0]
    cpu0, attacker_cpu0, t0 = _cpu(api_pid), _cpu(attacker.pid if attacker else None), time.monotonic()
    await asyncio.gather(*(_honest(port, args.seconds, latencies, failures) for _ in range(args.honest)))
    took = time.monotonic() - t0
    result: dict[str, Any] = {"honest": len(latencies), "honest_failed": failures[0]}
    # CPU shares (of one core): what the attack costs the API worker, and what the attacker itself burns on
    # this shared machine (latency the server did not cause).
    if cpu0 is not None:
        result["api_worker_cpu"] = ((_cpu(api_pid) or cpu0) - cpu0) / took
    if attacker_cpu0 is not None:
        result["attacker_cpu"] = ((_cpu(attacker.pid if attacker else None) or attacker_cpu0) - attacker_cpu0) / took
    result.update({f"honest_{k}_ms": v for k, v in percentiles(latencies).items() if k in ("p50", "p99")})
    if attacker is not None:
        out, _ = await asyncio.wait_for(attacker.communicate(), 60.0)
        result.update(orjson.loads(out.splitlines()[-1]))
    return result


def run_tree(tree: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Every phase against the `shmserve` of `tree`."""
    done = args.rounds_done.setdefault(str(tree), 0)
    args.rounds_done[str(tree)] += 1
    attacks = tuple(p for p in PHASES[1:] if p in args.phases)
    order = attacks[done % len(attacks):] + attacks[:done % len(attacks)]  # each round starts elsewhere: drift averages out
    tag = f"{abs(hash(str(tree))) % 10**6}_{done}"
    proc, port, deadlines, api = _start(tree, args.deadline_s, logs / f"attack_{tag}.log", logs / f"run_{tag}")
    try:
        phases = {"none": asyncio.run(_phase("none", port, args, api))}
        phases.update({kind: asyncio.run(_phase(kind, port, args, api)) for kind in order})
        after = asyncio.run(_phase("none", port, args, api))  # a second baseline, after the attacks
    finally:
        stop(proc, group=True)
    for key in ("honest_p50_ms", "honest_p99_ms", "api_worker_cpu"):
        phases["none"][key + "_after"] = after.get(key)
    return {"tree": str(tree), "deadlines": deadlines, "order": list(order), "phases": phases}


def _cell(values: list[Any]) -> str:
    """The median of a figure over rounds, with its range when there are several."""
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    if isinstance(got[0], dict):  # statuses: totals over the rounds
        total: dict[str, int] = {}
        for d in got:
            for k, n in d.items():
                total[k] = total.get(k, 0) + n
        return " ".join(f"{k}:{n}" for k, n in sorted(total.items()))
    med = statistics.median(got)
    text = f"{med:.2f}" if isinstance(med, float) else str(med)
    if len(got) > 1:
        lo, hi = min(got), max(got)
        text += f" ({lo:.2f}-{hi:.2f})" if isinstance(lo, float) or isinstance(hi, float) else f" ({lo}-{hi})"
    return text


def table(runs: list[dict[str, Any]]) -> str:
    """Each figure of each tree side by side (median and range over rounds); honest p50 as a ratio to no attack."""
    by_tree: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_tree.setdefault(r["tree"], []).append(r)
    names = [Path(t).name or t for t in by_tree]
    rounds = max(len(v) for v in by_tree.values())
    lines = [f"{rounds} round(s) per tree, interleaved; median (range) over the rounds", "",
             "| phase | figure | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(by_tree)]
    keys = ["honest", "honest_failed", "honest_p50_ms", "honest_p99_ms", "honest_p50_ms_after", "honest_p99_ms_after",
            "p50_vs_none", "p99_vs_none", "api_worker_cpu", "api_worker_cpu_after", "attacker_cpu", "attack_closed",
            "attack_still_open", "attack_life_p50_s", "attack_life_max_s", "attack_sent", "attack_statuses"]
    for phase in PHASES:
        if not all(phase in r["phases"] for r in runs):
            continue
        for key in keys:
            cells = []
            for tree_runs in by_tree.values():
                values = []
                for r in tree_runs:
                    ph = r["phases"][phase]
                    v = ph.get(key)
                    if key in ("p50_vs_none", "p99_vs_none"):
                        figure = "honest_" + key[:3] + "_ms"
                        none = r["phases"]["none"]
                        both = [x for x in (none.get(figure), none.get(figure + "_after")) if x]
                        base = sum(both) / len(both) if both else None  # the baselines before and after
                        v = ph[figure] / base if base and ph.get(figure) else None
                    values.append(v)
                cells.append(_cell(values))
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
    parser.add_argument("--storm-rate", type=int, default=200, help="connections a second in the connection storm")
    parser.add_argument("--flood-rate", type=int, default=200,
                        help="requests a second in the zero-row and malformed-body floods")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every tree's phases")
    parser.add_argument("--control-cpu", type=float, default=0.1, help="share of a core the cpu_control phase burns")
    parser.add_argument("--deadline-s", type=float, default=2.0, help="header/body/send timeout given to the server")
    parser.add_argument("--phases", type=lambda s: [p for p in s.split(",") if p], default=list(PHASES[1:]),
                        help="comma-separated attack phases to run (the 'none' baselines always run); default: all")
    parser.add_argument("--attack", choices=PHASES[1:], help=argparse.SUPPRESS)  # the attacker process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.phases) - set(PHASES[1:])
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES[1:])}")
    if args.attack:
        if args.attack == "cpu_control":
            print(orjson.dumps(asyncio.run(_control_main(args.attackers / 100, args.seconds))).decode())
            return 0
        main_of = _attack_main if args.attack in _SLOW else _flood_main
        print(orjson.dumps(asyncio.run(main_of(args.attack, args.port, args.attackers, args.seconds))).decode())
        return 0
    args.tree = [t for _ in range(args.rounds) for t in (args.tree or [REPO])]  # rounds interleave the trees
    args.rounds_done = {}
    return compare_trees("attack", args, run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
