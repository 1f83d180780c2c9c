"""Instructions per request of the API worker path, counted by callgrind (repeatable on a noisy machine).

Wall-clock figures on a shared machine move by tens of percent from run to
run; the number of instructions a process executes to answer a request does
not, so this is the figure to judge a change of the HTTP path by.

What runs:

- this process starts the runner worker of ``examples.service_mlp`` (real
  processes, real shared memory; not under valgrind);
- an API worker, the same pieces as ``shmserve serve``'s (service loaded,
  runners attached, `App`, `HttpServer`, the runner-trace metrics hook, uvloop),
  runs under ``valgrind --tool=callgrind --instr-atstart=no``;
- once it listens, this process sends ``--warmup`` requests, switches
  instrumentation on (``callgrind_control -i on``), sends ``--requests``
  requests over ``--connections`` keep-alive connections (each one request
  at a time), dumps the counters (``callgrind_control -d``) and stops the worker.

Instructions per request = (the dump's ``summary`` - what the worker executes
per second with no requests, measured for ``--idle`` seconds right after, times
the wall time of the run) / requests: the 0.5 s tick and the metrics publish
are taken out, since under valgrind their share depends on how fast the run
went. They include the completion wake-ups, of which a worker slowed ~50x by valgrind gets about one
per request (at full speed one wake-up brings several results), so the figure
is an upper bound of the per-request work at saturation. ``--annotate`` prints
the top functions (``callgrind_annotate``; C functions: the interpreter, uvloop,
httptools, numpy, orjson)::

    python -m perf.callgrind_api --body json --requests 2000
    python -m perf.callgrind_api --body raw --requests 2000 --tree /path/to/other/checkout
    python -m perf.callgrind_api --body v2 --requests 2000     # the v2 binary request of perf/bench_v2.py
    python -m perf.callgrind_api --config on.yaml --per-thread  # e.g. the access log on; each thread apart
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .env import REPO, THREAD_ENV, bench_dir
from .procs import close_stdin_and_wait

__all__ = ["main", "load", "measure"]

SERVICE = "examples.service_mlp:svc"
#: the API worker's main, a script that imports only shmserve (of the tree under test)
WORKER = Path(__file__).resolve().parent / "_callgrind_worker.py"


def _request(path: str, body: bytes, ctype: str, extra: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-type: {ctype}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _client(port: int, request: bytes, n: int, statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            statuses.append(int(head.split(b" ", 2)[1]))
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()


def load(port: int, request: bytes, total: int, connections: int) -> list[int]:
    """Send `total` requests over `connections` connections, each one at a time; return the statuses."""
    statuses: list[int] = []
    per = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]

    async def all_clients() -> None:
        await asyncio.gather(*(_client(port, request, n, statuses) for n in per if n))

    asyncio.run(all_clients())
    return statuses


def bodies() -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """The saturation benchmark's two bodies: the (1, 784) JSON array and its raw float32 bytes; and ``v2``,
    the same tensor as an Open Inference Protocol binary request (perf/bench_v2.py's) to `V2_PATH`."""
    raw_json = (bench_dir() / "body_array.json").read_bytes()
    x = np.asarray(json.loads(raw_json), dtype=np.float32)
    shape = ",".join(str(n) for n in x.shape)
    v2_head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                      "parameters": {"binary_data_size": x.nbytes}}],
                          "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    return {"json": (raw_json, "application/json", {}),
            "raw": (x.tobytes(), "application/octet-stream", {"x-tensor-dtype": "float32", "x-tensor-shape": shape}),
            "v2": (v2_head + x.tobytes(), "application/octet-stream",
                   {"inference-header-content-length": str(len(v2_head))})}


#: where each body is sent: the native API, or the runner method as a v2 model
PATHS = {"json": "/predict", "raw": "/predict", "v2": "/v2/models/mlp.predict/infer"}


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def measure(tree: Path, body: str, requests: int, warmup: int, connections: int, scratch: Path,
            annotate: int, idle_s: float = 10.0, inclusive: bool = False, config: Path | None = None,
            per_thread: bool = False) -> dict[str, Any]:
    """One callgrind run of an API worker from `tree`; the runner worker is started here from the same tree.

    `config`: a ``shmserve.yaml`` for the API worker. `per_thread`: also count each thread apart
    (``per_thread_instructions_per_request``, idle rate taken out, by callgrind's thread number;
    1 is the event loop's).
    """
    env = dict(os.environ, **THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(bench_dir())])
    env["SHMSERVE_RUNTIME_DIR"] = str(scratch / "run")
    (scratch / "run").mkdir(mode=0o700, exist_ok=True)
    port_file = scratch / "port"
    out_file = scratch / "callgrind.out"
    # The runner worker: a plain `shmserve.start` in a helper process of the tree under test.
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys, shmserve; from shmserve.service import load_service; "
         f"svc = load_service({SERVICE!r}); g = shmserve.start(*svc.runners, bind=False); "
         "print('ready', flush=True); sys.stdin.read(); g.stop()"],
        cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        assert starter.stdout is not None
        if not starter.stdout.readline().startswith("ready"):
            raise RuntimeError("the runner worker did not start")
        worker = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
             *(["--separate-threads=yes"] if per_thread else []),
             sys.executable, str(WORKER), SERVICE, str(port_file), *([str(config)] if config else [])],
            cwd=tree, env=env,
            stdout=(scratch / "worker.log").open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while not port_file.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API worker did not start; see {scratch / 'worker.log'}:\n"
                                   + (scratch / "worker.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        port = int(port_file.read_text())
        data, ctype, extra = bodies()[body]
        request = _request(PATHS[body], data, ctype, extra)
        bad = [s for s in load(port, request, warmup, connections) if s != 200]
        if bad:
            raise RuntimeError(f"warm-up requests answered {sorted(set(bad))}")
        _control("-i", "on", str(worker.pid))
        t0 = time.monotonic()
        statuses = load(port, request, requests, connections)
        wall = time.monotonic() - t0
        _control("-d", str(worker.pid))
        threads = _thread_counts(out_file) if per_thread else {}
        measured = _last_dump(out_file) if not per_thread else f"{out_file}.1-01"
        summary = sum(threads.values()) if per_thread else _summary(measured)
        # What the worker does with no requests (the tick, the metrics publish) over the same wall
        # time is taken out, so the figure does not depend on how fast valgrind ran this time.
        _control("-z", str(worker.pid))
        t1 = time.monotonic()
        time.sleep(idle_s)
        _control("-d", str(worker.pid))
        idle_wall = time.monotonic() - t1
        idle_threads = _thread_counts(out_file) if per_thread else {}
        idle_rate = (sum(idle_threads.values()) if per_thread else _summary(_last_dump(out_file))) / idle_wall
        _control("-i", "off", str(worker.pid))
        per_request = (summary - idle_rate * wall) / max(1, requests)
        result: dict[str, Any] = {"tree": str(tree), "body": body, "requests": requests,
                                  "ok": statuses.count(200), "connections": connections,
                                  "instructions": summary, "idle_instructions_per_s": idle_rate,
                                  "instructions_per_request": per_request,
                                  "instructions_per_request_with_idle": summary / max(1, requests),
                                  "wall_s_under_valgrind": wall}
        if per_thread:
            result["per_thread_instructions_per_request"] = {
                t: (n - idle_threads.get(t, 0) / idle_wall * wall) / max(1, requests) for t, n in threads.items()}
            result["per_thread_instructions_per_request_with_idle"] = {
                t: n / max(1, requests) for t, n in threads.items()}
        if annotate:
            ann = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", measured], capture_output=True,
                                 text=True, timeout=300).stdout
            result["top"] = _top(ann, annotate)
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(300)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        close_stdin_and_wait(starter, 60)


def _last_dump(out_file: Path) -> str:
    dumps = sorted(glob.glob(f"{out_file}.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    return dumps[-1]


def _thread_counts(out_file: Path) -> dict[int, int]:
    """Thread number -> count of the last dump written with ``--separate-threads`` (<out>.<dump>-<thread>)."""
    files: dict[int, dict[int, str]] = {}
    for p in glob.glob(f"{out_file}.*-*"):
        number, _, thread = p.rsplit(".", 1)[1].partition("-")
        files.setdefault(int(number), {})[int(thread)] = p
    if not files:
        raise RuntimeError("callgrind wrote no dump")
    return {t: _summary(p) for t, p in files[max(files)].items()}


def _summary(dump: str) -> int:
    """The total instruction count of one callgrind dump."""
    for line in Path(dump).read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {dump}")


def _top(annotate_text: str, n: int) -> list[str]:
    """The first `n` function lines of callgrind_annotate's output."""
    lines = [ln for ln in annotate_text.splitlines() if ln.strip() and ln.strip()[0].isdigit() and "  " in ln]
    return lines[:n]


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m perf.callgrind_api", description=__doc__.split("\n\n")[0])
    p.add_argument("--body", default="json", choices=("json", "raw", "v2"))
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--tree", action="append", type=Path, default=[], help="checkout to measure (repeatable; "
                                                                            "default: this one)")
    p.add_argument("--idle", type=float, default=10.0, metavar="S",
                   help="seconds without requests measured after the run (their rate is subtracted)")
    p.add_argument("--inclusive", action="store_true", help="--annotate lists inclusive counts (callees counted)")
    p.add_argument("--annotate", type=int, default=0, metavar="N", help="also list the top N functions")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="a shmserve.yaml for the API worker (api_server, tracing): e.g. the access log on")
    p.add_argument("--per-thread", action="store_true",
                   help="also count each thread apart (1: the event loop's); --annotate then lists the loop's")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="copy the callgrind dumps and the worker's log into DIR (for callgrind_annotate of any thread)")
    args = p.parse_args(argv)
    results = []
    for tree in args.tree or [REPO]:
        with tempfile.TemporaryDirectory(prefix="shmserve-callgrind-") as tmp:
            res = measure(tree.resolve(), args.body, args.requests, args.warmup, args.connections, Path(tmp),
                          args.annotate, args.idle, args.inclusive,
                          config=args.config.resolve() if args.config else None, per_thread=args.per_thread)
            if args.keep is not None:
                keep = args.keep / tree.resolve().name
                shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("run"), dirs_exist_ok=True)
                print(f"dumps kept in {keep}", flush=True)
        results.append(res)
        print(f"{res['tree']}: {res['body']} body, {res['ok']}/{res['requests']} ok, "
              f"{res['instructions_per_request']:,.0f} instructions/request "
              f"({res['instructions_per_request_with_idle']:,.0f} before the idle rate is subtracted) "
              f"({res['wall_s_under_valgrind']:.0f} s under valgrind)", flush=True)
        for thread, n in sorted(res.get("per_thread_instructions_per_request", {}).items()):
            print(f"    thread {thread}: {n:,.0f} instructions/request")
        for line in res.get("top", []):
            print("   ", line)
    out = REPO / "perf" / "results" / f"callgrind_api_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
