"""Large JSON bodies: peak memory and the longest event-loop stall while one is decoded, per decoder and size.

    python -m perf.bench_json --tree /path/to/old/checkout --tree .   # side by side, one run
    python -m perf.bench_json --mb 1 --mb 10 --mb 50 --rounds 3

For each ``--tree``, size (``--mb``) and decoder, a fresh process decodes one
JSON body as that tree's API worker would:

- ``ndarray``: a JSON array of rows of 784 numbers into ``NumpyNdarray(dtype="float32")``;
- ``json``: the same text into ``JSON()`` (Python lists);
- ``v2``: a v2 inference request whose one input's ``data`` holds those numbers (FP32).

A tree's server decodes a large body in steps on the event loop when the
descriptor offers it (``decode_in_steps`` / ``decode_async``; the v2 codec's
``decode_request_steps``), else in its thread pool when it asks
(``decode_off_loop``), else in one call on the loop; this benchmark does the
same. A 1 ms ticker on the loop records its longest gap; ``idle`` is that gap
over the same time with no decode at all (what the loaded machine alone
costs). ``max_loop_cpu_ms`` is the most CPU time the process spent between two
ticks: the longest piece of work the loop waited behind, which the machine's
load does not inflate (on a loaded machine the wall-clock gaps include time the
process was not scheduled at all); ``max_gc_pause_ms`` is the longest pause of
Python's cyclic garbage collector meanwhile (CPU time; it walks every list a
decode makes, so ``JSON()``'s nested lists cost pauses no decoder can split).
The parent samples the child's RSS every
2 ms from outside (a stalled loop could not). Figures: decode seconds, peak RSS
growth during the decode as a multiple of the body size, and the longest loop
stall (ms). ``--rounds``
repeats every (tree, size, decoder) interleaved, and the table gives the
median with the range. The machine may be shared and noisy.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .env import REPO
from .trees import compare_trees, tree_parser

DECODERS = ("ndarray", "json", "v2")

_CHILD = r'''
import asyncio, gc, json, resource, sys, time
import numpy as np

with open(sys.argv[1], "rb") as f:  # written by the parent: building it here would set the peak RSS
    body = f.read()
kind = sys.argv[2]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def descriptor_decoder(desc, headers):
    if hasattr(desc, "decode_in_steps") and desc.decode_in_steps(body, headers):
        return "steps", lambda loop: desc.decode_async(body, headers)
    if getattr(desc, "decode_off_loop", lambda b, h: False)(body, headers):
        return "thread", lambda loop: loop.run_in_executor(None, desc.decode, body, headers)
    return "loop", lambda loop: desc.decode(body, headers)

def v2_decoder():
    from shmserve.http.v2 import codec
    limit = 1 << 40
    if hasattr(codec, "decode_request_steps"):
        from shmserve.jsonscan import run_async
        return "steps", lambda loop: run_async(codec.decode_request_steps(body, {}, None, limit))
    return "loop", lambda loop: codec.decode_request(body, {}, None, limit)

if kind == "ndarray":
    from shmserve.io import NumpyNdarray
    mode, start = descriptor_decoder(NumpyNdarray(dtype="float32"), {b"content-type": b"application/json"})
elif kind == "json":
    from shmserve.io import JSON
    mode, start = descriptor_decoder(JSON(), {b"content-type": b"application/json"})
else:
    mode, start = v2_decoder()

gc_pauses = []  # the cyclic collector's pauses (it walks every list the decode makes)
def on_gc(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.process_time()
    else:
        gc_pauses.append(time.process_time() - started[0])
gc.callbacks.append(on_gc)

base = rss()
peak = [base]
print(json.dumps({"base": base}), flush=True)
time.sleep(0.2)  # the parent starts sampling our RSS from outside (a stalled loop cannot)

async def ticked(work, seconds=None):
    """The longest gap of a 1 ms ticker while `work` runs (or for `seconds` with no work)."""
    gaps, cpu_gaps = [], []
    stop = False
    async def tick():
        last, last_cpu = time.perf_counter(), time.process_time()
        while not stop:
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.process_time()
            gaps.append(now - last)
            cpu_gaps.append(cpu - last_cpu)
            peak[0] = max(peak[0], rss())
            last, last_cpu = time.perf_counter(), time.process_time()
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    gaps.clear()
    cpu_gaps.clear()
    gc_pauses.clear()
    t0 = time.perf_counter()
    if work is None:
        await asyncio.sleep(seconds)
        out = None
    else:
        out = work(asyncio.get_running_loop())
        if asyncio.isfuture(out) or asyncio.iscoroutine(out):
            out = await out
    took = time.perf_counter() - t0
    stop = True
    await ticker
    return out, took, max(gaps), max(cpu_gaps), max(gc_pauses, default=0.0)

async def main():
    out, took, stall, cpu, gc_max = await ticked(start)
    del out
    _, _, idle, _, _ = await ticked(None, max(0.05, took))
    return took, stall, cpu, gc_max, idle

took, stall, cpu, gc_max, idle = asyncio.run(main())
print(json.dumps({"mode": mode, "decode_s": took, "max_loop_stall_ms": stall * 1e3, "max_loop_cpu_ms": cpu * 1e3,
                  "max_gc_pause_ms": gc_max * 1e3, "idle_stall_ms": idle * 1e3}))
'''


def _write_body(path: Path, mb: float, kind: str) -> None:
    rows = max(1, int(mb * 1e6 / (784 * 9)))
    rng = np.random.default_rng(0)
    array = b"[" + b",".join(orjson.dumps(rng.random((min(500, rows - i), 784)).round(6).tolist())[1:-1]
                             for i in range(0, rows, 500)) + b"]"
    if kind == "v2":
        head = b'{"id":"bench","inputs":[{"name":"x","datatype":"FP32","shape":[%d,784],"data":' % rows
        array = head + array + b"}]}"
    path.write_bytes(array)


def _one(tree: Path, body: Path, kind: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(body), kind], env=env, cwd=body.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=60)
        raise RuntimeError(err[-3000:])
    base = json.loads(line)["base"]
    peak = base
    page = os.sysconf("SC_PAGE_SIZE")
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/statm") as f:
                peak = max(peak, int(f.read().split()[1]) * page)
        except (OSError, IndexError, ValueError):
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=900)
    if proc.returncode:
        raise RuntimeError(err[-3000:])
    result = json.loads(out.splitlines()[-1])
    size = body.stat().st_size
    return {**result, "body_mb": size / 1e6, "peak_growth_x_body": (peak - base) / size}


def run_tree(tree: Path, args: Any, scratch: Path) -> dict[str, Any]:
    """Every (size, decoder) for one tree, one fresh process each, so the peak RSS is that decode's alone."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for mb in args.mb or [50.0]:
        for kind in args.decoder or DECODERS:
            body = scratch / f"{kind}_{mb:g}.json"
            if not body.exists():
                _write_body(body, mb, kind)
            cases.setdefault(f"{kind} {mb:g} MB", []).append(_one(tree, body, kind))
    return {"tree": str(tree), "cases": cases}


def _fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def table(runs: list[dict[str, Any]]) -> str:
    """Per case, each tree's median (range) of decode seconds, peak growth, loop stall and idle stall."""
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:  # the rounds of one tree gather into one entry
        mine = seen.setdefault(r["tree"], {"cases": {}})
        for case, got in r["cases"].items():
            mine["cases"].setdefault(case, []).extend(got)
    names = [Path(t).name or t for t in seen]
    lines = ["| case | figure | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(seen)]
    cases = list(next(iter(seen.values()))["cases"])
    for case in cases:
        for key in ("decode_s", "peak_growth_x_body", "max_loop_stall_ms", "max_loop_cpu_ms", "max_gc_pause_ms",
                    "idle_stall_ms"):
            cells = [_fmt([c.get(key, 0.0) for c in r["cases"][case]]) for r in seen.values()]
            lines.append(f"| {case} | {key} | " + " | ".join(cells) + " |")
        modes = [",".join(sorted({c["mode"] for c in r["cases"][case]})) for r in seen.values()]
        lines.append(f"| {case} | decoded | " + " | ".join(modes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__)
    parser.add_argument("--mb", type=float, action="append", help="size of the JSON body in MB (repeatable; 50)")
    parser.add_argument("--decoder", choices=DECODERS, action="append", help="decoders to run (repeatable; all)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every tree and case")
    args = parser.parse_args(argv)
    args.tree = [t for _ in range(args.rounds) for t in (args.tree or [REPO])]  # rounds interleave the trees
    return compare_trees("json", args, run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
