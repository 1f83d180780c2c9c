"""A bounded soak: mixed valid and hostile traffic, then memory, file descriptors and /dev/shm checked flat.

    python -m perf.soak                        # 60 s (what the README calls the long run: --seconds 600)
    python -m perf.soak --seconds 10           # the short run CI does (tests/integration/test_soak.py)

Serves ``examples/service_mlp.py`` (two API workers) and sends, from
``--clients`` concurrent connections with a seeded mix (``--seed``): valid
``/predict`` calls as JSON, ``.npy`` and raw bytes, and bad ones — malformed
HTTP, invalid JSON, JSON strings, a ``.npy`` with a shape too large to exist, a
wrong dtype, headers over the limit, a body cut short by a disconnect, and
slow clients that the header deadline closes. Every answer must be a
well-formed HTTP response with the status its request calls for (a 500 or a
hang fails the run).

After a warm-up third of the run, the server's RSS (all its processes), open
file descriptors and ``/dev/shm`` entries are sampled; at the end (after the
slow clients' deadline has passed) each must be back within its tolerance of
that sample (``--rss-slack-mb``; file descriptors and /dev/shm exactly). Exits
1 with what grew otherwise. The machine may be shared and noisy; the checks
compare the server with itself.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .env import REPO, THREAD_ENV
from .procs import descendants, free_port, stop, wait_http

HEADER_TIMEOUT_S = 2.0


def _post(path: str, body: bytes, ctype: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _cases() -> list[tuple[str, bytes, int]]:
    """(name, raw request, expected status); each is sent on a connection of its own."""
    x = np.ones((2, 784), np.float32)
    huge = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904)}"
    return [
        ("json", _post("/predict", orjson.dumps(x.tolist()), "application/json"), 200),
        ("npy", _post("/predict", _npy(x), "application/x-npy"), 200),
        ("octet", _post("/predict", x.tobytes(), "application/octet-stream",
                        "x-tensor-dtype: float32\r\nx-tensor-shape: 2,784\r\n"), 200),
        ("malformed", b"GARBAGE / NOT-HTTP\r\n\r\n", 400),
        ("bad_json", _post("/predict", b"[[1, 2,", "application/json"), 400),
        ("json_string", _post("/predict", b'[["nan"] ]', "application/json"), 400),
        ("npy_too_big", _post("/predict", b"\x93NUMPY\x01\x00" + len(huge).to_bytes(2, "little") + huge,
                              "application/x-npy"), 400),
        ("wrong_shape", _post("/predict", np.ones((2, 5), np.float32).tobytes(), "application/octet-stream",
                              "x-tensor-dtype: float32\r\nx-tensor-shape: 2,5\r\n"), 400),
        ("big_header", b"GET /livez HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        ("long_url", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414),
        ("unknown_route", b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n", 404),
    ]


async def _exchange(port: int, raw: bytes, timeout: float = 10.0) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def _cut_short(port: int) -> None:
    """A body promised and never finished: the client goes away mid-request."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/predict", b"[[1, 2", "application/json")[:-2] + b"\r\ncontent-length: 99999\r\n\r\n[[1")
    await asyncio.sleep(0.01)
    writer.close()


async def _slow(port: int, seen: Counter) -> None:
    """A slowloris client: the server must close it (408) after its header deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
        head = await asyncio.wait_for(reader.read(4096), HEADER_TIMEOUT_S + 5.0)
        seen["slow_closed" if head.startswith(b"HTTP/1.1 408") or not head else "slow_wrong"] += 1
    except asyncio.TimeoutError:
        seen["slow_not_closed"] += 1
    finally:
        writer.close()


async def _client(port: int, rng: random.Random, until: float, seen: Counter, bad: list[str]) -> None:
    cases = _cases()
    while time.monotonic() < until:
        roll = rng.random()
        try:
            if roll < 0.03:
                await _cut_short(port)
                seen["cut_short"] += 1
            elif roll < 0.05:
                await _slow(port, seen)
            else:
                name, raw, want = rng.choice(cases)
                got = await _exchange(port, raw)
                seen[name] += 1
                if got != want:
                    bad.append(f"{name}: got {got}, expected {want}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            bad.append(f"request failed: {type(exc).__name__}: {exc}")


def _footprint(pids: set[int], tag: str) -> dict[str, Any]:
    """RSS and open fds of `pids`, and the /dev/shm names carrying `tag` (the server's name tag)."""
    rss = 0
    fds = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    try:
        shm = sorted(n for n in os.listdir("/dev/shm") if f"_{tag}" in n)
    except OSError:
        shm = []
    return {"rss_mb": rss / 2**20, "fds": fds, "shm": shm}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, soak it, return the figures and what went wrong (``problems``)."""
    port = free_port()
    runtime = tempfile.mkdtemp(prefix="shs-soak-")
    keep = True  # until the soak ends without problems
    tag = "sk" + os.urandom(3).hex()  # SHMSERVE_NAME_TAG: at most 8 letters or digits
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.update({"PYTHONPATH": os.pathsep.join([str(args.tree), str(REPO / "examples")]),
                "SHMSERVE_RUNTIME_DIR": runtime, "SHMSERVE_NAME_TAG": tag})
    log = Path(runtime) / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmserve.cli", "serve", "service_mlp:svc", "--host", "127.0.0.1", "--port", str(port),
         "--api-workers", "2", "--header-timeout", str(HEADER_TIMEOUT_S)],
        cwd=REPO / "examples", env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    problems: list[str] = []
    seen: Counter = Counter()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
        pids = set(descendants(proc.pid)) | {proc.pid}
        rng = random.Random(args.seed)
        start = time.monotonic()
        warm_until, until = start + args.seconds / 3, start + args.seconds

        async def soak() -> tuple[dict[str, Any], dict[str, Any]]:
            bad: list[str] = []
            clients = [asyncio.create_task(_client(port, random.Random(rng.random()), warm_until, seen, bad))
                       for _ in range(args.clients)]
            await asyncio.gather(*clients)
            await asyncio.sleep(HEADER_TIMEOUT_S + 1.0)  # the warm-up's slow clients are gone
            before = _footprint(pids, tag)
            clients = [asyncio.create_task(_client(port, random.Random(rng.random()), until, seen, bad))
                       for _ in range(args.clients)]
            await asyncio.gather(*clients)
            await asyncio.sleep(HEADER_TIMEOUT_S + 1.0)
            problems.extend(sorted(set(bad))[:20])
            return before, _footprint(pids, tag)

        before, after = asyncio.run(soak())
        if proc.poll() is not None:
            problems.append(f"the server exited with code {proc.returncode}")
        if after["rss_mb"] > before["rss_mb"] + args.rss_slack_mb:
            problems.append(f"RSS grew from {before['rss_mb']:.0f} to {after['rss_mb']:.0f} MiB")
        if after["fds"] > before["fds"]:
            problems.append(f"open file descriptors grew from {before['fds']} to {after['fds']}")
        if set(after["shm"]) - set(before["shm"]):
            problems.append(f"new /dev/shm entries: {sorted(set(after['shm']) - set(before['shm']))}")
        for key in ("slow_not_closed", "slow_wrong"):
            if seen[key]:
                problems.append(f"{seen[key]} slow clients: {key}")
        if "Traceback" in log.read_text(errors="replace"):
            problems.append(f"the server logged a traceback; see {log}")
        keep = bool(problems)
        return {"requests": dict(seen), "before": before, "after": after, "problems": problems}
    finally:
        stop(proc, group=True)
        if not keep:  # a soak with problems keeps its folder: the server log is there
            shutil.rmtree(runtime, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the soak (a third is warm-up)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--seed", type=int, default=0, help="seed of the traffic mix")
    parser.add_argument("--rss-slack-mb", type=float, default=32.0, help="RSS growth allowed after the warm-up")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose shmserve to serve")
    args = parser.parse_args(argv)
    result = run(args)
    print(orjson.dumps({k: v for k, v in result.items() if k != "problems"}, option=orjson.OPT_INDENT_2).decode())
    for p in result["problems"]:
        print("PROBLEM:", p, file=sys.stderr)
    print("flat" if not result["problems"] else "NOT flat", file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
