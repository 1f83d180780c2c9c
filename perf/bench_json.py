"""Large JSON tensor bodies: peak memory and the longest event-loop stall while one is decoded.

    python -m perf.bench_json --tree /path/to/old/checkout --tree .   # side by side, one run

For each ``--tree``, a fresh process builds a JSON array of ``--mb`` MB (rows of
784 numbers), then decodes it with ``NumpyNdarray(dtype="float32")`` as that
tree's API worker would: in its thread pool when the descriptor asks for it
(``decode_off_loop``), else on the event loop. A 1 ms ticker on the loop records
its longest gap; the parent samples the child's RSS every 2 ms from outside
(a stalled loop could not). Figures: decode seconds, peak RSS
growth during the decode (as a multiple of the body size), and the longest
loop stall (ms). The machine may
be shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .trees import compare_trees, tree_parser

_CHILD = r'''
import asyncio, json, resource, sys, time
import numpy as np, orjson
from shmserve.io import NumpyNdarray

with open(sys.argv[1], "rb") as f:  # written by the parent: building it here would set the peak RSS
    body = f.read()
desc = NumpyNdarray(dtype="float32")
headers = {b"content-type": b"application/json"}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

base = rss()
peak = [base]
print(json.dumps({"base": base}), flush=True)
time.sleep(0.2)  # the parent starts sampling our RSS from outside (a stalled loop cannot)

async def main():
    loop = asyncio.get_running_loop()
    gaps = []
    stop = False
    async def tick():
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            peak[0] = max(peak[0], rss())
            last = now
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    off = getattr(desc, "decode_off_loop", None)
    if off is not None and off(body, headers):
        arr = await loop.run_in_executor(None, desc.decode, body, headers)
    else:
        arr = desc.decode(body, headers)
    took = time.perf_counter() - t0
    peak[0] = max(peak[0], rss())
    await asyncio.sleep(0.05)
    stop = True
    await ticker
    return arr, took, max(gaps)

arr, took, stall = asyncio.run(main())
print(json.dumps({"body_mb": len(body) / 1e6, "shape": list(arr.shape), "decode_s": took,
                  "peak_growth_x_body": (peak[0] - base) / len(body), "max_loop_stall_ms": stall * 1e3}))
'''


def run_tree(tree: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One fresh process per tree, so the peak RSS is this decode's alone."""
    path = scratch / "body.json"
    if not path.exists():
        rows = max(1, int(args.mb * 1e6 / (784 * 9)))
        rng = np.random.default_rng(0)
        with path.open("wb") as f:
            f.write(b"[" + b",".join(orjson.dumps(rng.random((min(500, rows - i), 784)).round(6).tolist())[1:-1]
                                     for i in range(0, rows, 500)) + b"]")
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], env=env, cwd=scratch,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    base = json.loads(proc.stdout.readline())["base"]
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
    result["peak_growth_x_body"] = (peak - base) / (result["body_mb"] * 1e6)
    return {"tree": str(tree), **result}


def table(runs: list[dict[str, Any]]) -> str:
    """The figures of each tree side by side."""
    names = [Path(r["tree"]).name or r["tree"] for r in runs]
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(runs)]
    for key in ("body_mb", "decode_s", "peak_growth_x_body", "max_loop_stall_ms"):
        lines.append(f"| {key} | " + " | ".join(f"{r[key]:.2f}" for r in runs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__)
    parser.add_argument("--mb", type=float, default=50.0, help="size of the JSON body in MB")
    return compare_trees("json", parser.parse_args(argv), run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
