"""Instructions per call of the runner worker, counted by callgrind, trees side by side.

    python -m perf.callgrind_runner --tree /path/to/old/checkout --tree .

The counterpart of `perf.callgrind_api` for the other process of the serving
path. For each ``--tree``, the runner of ``examples.service_mlp`` (the
benchmark MLP, batches of up to 64 items within 10 ms) is started by a plain
process whose runner worker runs under ``valgrind --tool=callgrind
--instr-atstart=no`` (the spawn start method's interpreter is a wrapper script
that execs valgrind). A client process at full speed keeps ``--concurrency``
calls of one (1, 784) float32 row in flight with ``async_run`` (the API
worker's way of calling); once ``--warmup`` calls are answered,
instrumentation goes on (``callgrind_control -i on``) for ``--calls`` calls,
the counters are dumped, and what the worker executes per second with no
calls, measured for ``--idle`` seconds right after, is also shown taken out
over the same wall time, as `perf.callgrind_api` does; the first figure keeps
it (a worker whose queue is full does not idle, and how much of its idle
polling shows depends on how the run ended), so it is the one to compare.

The worker, slowed ~50x by valgrind, sees its queue full at every decision
when ``--concurrency`` is well above the batch size: the figure is the
worker's cost per call where batches fill (intake, batching decisions, the
model, result writes, completion posts). ``--concurrency 1`` gives the cost
of a call served alone.
"""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .callgrind_api import SERVICE, _control, _last_dump, _summary, _top
from .env import THREAD_ENV, bench_dir
from .procs import close_stdin_and_wait, descendants
from .trees import compare_trees, tree_parser

__all__ = ["main", "run_tree"]

# The runner worker's interpreter: the spawn start method runs this instead of sys.executable
# (set before the first worker is spawned; the resource tracker is started before, at full speed).
_STARTER = r"""
import multiprocessing, multiprocessing.resource_tracker as tracker, sys
import shmserve
from shmserve.service import load_service
from shmserve.worker import group
tracker.ensure_running()
multiprocessing.set_executable(sys.argv[2])
group.READY_TIMEOUT_S = 900.0  # importing numpy under valgrind is slow
svc = load_service(sys.argv[1])
g = shmserve.start(*svc.runners, bind=False)
print("ready", flush=True)
sys.stdin.read()  # until the parent closes it
g.stop()
"""

_CLIENT = r"""
import asyncio, sys, time, numpy as np, shmserve
name, concurrency, warmup, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.ones((1, 784), np.float32)
with shmserve.connect(name, timeout=600) as r:
    async def caller(k):
        for _ in range(k):
            await r.predict.async_run(x, timeout=600)
    async def burst(n):
        per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
        await asyncio.gather(*(caller(k) for k in per if k))
    asyncio.run(burst(warmup))
    print("warm", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    asyncio.run(burst(calls))
    print(f"done {time.monotonic() - t0}", flush=True)
    sys.stdin.readline()
"""


def _wrapper(scratch: Path, out_pattern: str) -> Path:
    """A script that runs its arguments with this interpreter under callgrind (instrumentation off)."""
    path = scratch / "vgpython"
    path.write_text("#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no "
                    f"--callgrind-out-file={out_pattern} {sys.executable} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _worker_pid(starter: int) -> int:
    """The runner worker: the starter's descendant that runs under valgrind."""
    for pid in descendants(starter):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if "valgrind" in exe or "callgrind" in exe:
            return pid
    raise RuntimeError("no runner worker under valgrind among the starter's processes")


def run_tree(tree: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Serve the MLP runner from `tree` with its worker under callgrind; count its instructions per call."""
    work = scratch / tree.name
    work.mkdir(parents=True, exist_ok=True)
    (work / "run").mkdir(mode=0o700, exist_ok=True)
    for old in work.glob("cg.*"):
        old.unlink()
    env = dict(os.environ, **THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(bench_dir())])
    env["SHMSERVE_RUNTIME_DIR"] = str(work / "run")
    name = "mlp"
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, SERVICE, str(_wrapper(work, str(work / "cg.%p")))],
                               cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert starter.stdout is not None and starter.stdin is not None
        if not starter.stdout.readline().startswith("ready"):
            raise RuntimeError(f"the runner worker of {tree} did not start")
        pid = _worker_pid(starter.pid)
        client = subprocess.Popen([sys.executable, "-c", _CLIENT, name, str(args.concurrency), str(args.warmup),
                                   str(args.calls)], cwd=tree, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdin is not None
        if not client.stdout.readline().startswith("warm"):
            raise RuntimeError(f"the client of {tree} failed during the warm-up")
        _control("-i", "on", str(pid))
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        if not line.startswith("done"):
            raise RuntimeError(f"the client of {tree} failed: {line!r}")
        wall = float(line.split()[1])
        _control("-d", str(pid))
        out = str(work / f"cg.{pid}")
        measured = _last_dump(out)
        summary = _summary(measured)
        _control("-z", str(pid))
        t1 = time.monotonic()
        time.sleep(args.idle)
        _control("-d", str(pid))
        idle_rate = _summary(_last_dump(out)) / (time.monotonic() - t1)
        _control("-i", "off", str(pid))
        figures: dict[str, Any] = {
            "tree": str(tree), "calls": args.calls, "concurrency": args.concurrency,
            "instructions_per_call": round((summary - idle_rate * wall) / args.calls),
            "instructions_per_call_with_idle": round(summary / args.calls), "wall_s_under_valgrind": wall}
        if args.annotate:
            ann = subprocess.run(["callgrind_annotate", measured], capture_output=True, text=True, timeout=300).stdout
            figures["top"] = _top(ann, args.annotate)
        return figures
    finally:
        if client is not None:
            close_stdin_and_wait(client, 60)
        close_stdin_and_wait(starter, 300)


def table(runs: list[dict[str, Any]]) -> str:
    """Instructions per call, one line per tree, with the ratio to the first."""
    base = runs[0]["instructions_per_call_with_idle"]
    lines = [f"runner worker instructions per call (callgrind Ir), concurrency {runs[0]['concurrency']}"]
    for r in runs:
        n = r["instructions_per_call_with_idle"]
        lines.append(f"{r['tree']:<40} {n:>12,} ({n / base:.3f})"
                     f"   idle rate taken out: {r['instructions_per_call']:,}")
        lines.extend("    " + t for t in r.get("top", []))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    parser = tree_parser(__doc__ or "")
    parser.add_argument("--calls", type=int, default=3000, help="measured calls (default 3000)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=128, help="calls kept in flight (default 128)")
    parser.add_argument("--idle", type=float, default=5.0, metavar="S",
                        help="seconds without calls measured after the run (their rate is subtracted)")
    parser.add_argument("--annotate", type=int, default=0, metavar="N", help="also list the top N functions")
    return compare_trees("callgrind_runner", parser.parse_args(argv), run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
