"""Instructions the calling process spends per runner call, counted by callgrind, trees side by side.

    python -m perf.callgrind_calls --tree /path/to/old/checkout --tree .

Wall-clock figures swing by tens of percent on a shared machine; instruction
counts repeat to about a percent, so they judge a change to the calling side
(client, link, channel, wire). For each ``--tree`` an echo runner is served by
a plain process, and a client process under ``valgrind --tool=callgrind``
makes ``--calls`` and then twice as many calls of a 3 KB float32 tensor; the
difference of the two totals, divided by the extra calls, is the cost of one
call with start-up and imports cancelled out. Modes: ``sync`` (``run()``, with
polling off, ``SHMSERVE_SPIN_US=0``, so waiting costs no instructions),
``async`` (one coroutine awaiting ``async_run()`` in turn) and ``async16``
(16 coroutines at once). Only the client is counted, not the worker.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .trees import compare_trees, tree_parser

MODES = ("sync", "async", "async16")

_SERVER = r"""
import sys, time, shmserve
from perf.runnables import EchoRunnable
r = shmserve.Runner(EchoRunnable, name=sys.argv[1], arena_mb=4, max_batch_size=1)
with shmserve.start(r, workers=1):
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
"""

_CLIENT = r"""
import asyncio, sys, numpy as np, shmserve
name, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.ones(768, np.float32)  # 3 KB
with shmserve.connect(name, timeout=300) as r:  # attaching under valgrind is slow
    for _ in range(50):
        r.echo.run(x)  # warm: the first calls fill caches and the allocator's history
    if mode == "sync":
        for _ in range(n):
            r.echo.run(x)
    else:
        width = 16 if mode == "async16" else 1
        async def caller(k):
            for _ in range(k):
                await r.echo.async_run(x)
        async def main():
            await caller(20)
            await asyncio.gather(*(caller(n // width) for _ in range(width)))
        asyncio.run(main())
"""


def _instructions(tree: Path, name: str, mode: str, calls: int, scratch: Path) -> int:
    out = scratch / f"cg.{uuid.uuid4().hex[:8]}.out"
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{Path(__file__).resolve().parents[1]}",
               SHMSERVE_SPIN_US="0", OMP_NUM_THREADS="1")
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c",
                           _CLIENT, name, mode, str(calls)], env=env, cwd=scratch, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"the client of {tree} failed ({mode}): {done.stderr[-3000:]}")
    text = out.read_text(errors="replace")
    out.unlink()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"no instruction total in the callgrind output of {tree}")
    return int(found.group(1))


def run_tree(tree: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Serve the echo runner from `tree`, count its client's instructions per call in each mode."""
    name = f"cg{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{Path(__file__).resolve().parents[1]}")
    # cwd: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
    server = subprocess.Popen([sys.executable, "-c", _SERVER, name], env=env, cwd=scratch, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 120
        line = server.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > deadline:
            raise RuntimeError(f"the echo runner of {tree} did not start")
        figures: dict[str, Any] = {"tree": str(tree)}
        for mode in args.mode or MODES:
            small = _instructions(tree, name, mode, args.calls, scratch)
            large = _instructions(tree, name, mode, 2 * args.calls, scratch)
            figures[mode] = round((large - small) / args.calls)
        return figures
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def table(runs: list[dict[str, Any]]) -> str:
    """Instructions per call, each tree in a column, and each tree's ratio to the first."""
    modes = [m for m in MODES if m in runs[0]]
    names = [Path(r["tree"]).name or r["tree"] for r in runs]
    lines = ["instructions per call (client process, callgrind Ir)",
             f"{'mode':<10}" + "".join(f"{n[:18]:>20}" for n in names)]
    for m in modes:
        base = runs[0][m]
        lines.append(f"{m:<10}" + "".join(f"{r[m]:>12,} ({r[m] / base:.3f})" for r in runs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    parser = tree_parser(__doc__ or "")
    parser.add_argument("--calls", type=int, default=2000, help="calls in the shorter run (default 2000)")
    parser.add_argument("--mode", action="append", choices=MODES, help="measure only this mode (repeatable)")
    return compare_trees("callgrind_calls", parser.parse_args(argv), run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
