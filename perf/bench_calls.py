"""Round trips of `run()` and `async_run()` through shared memory, checkouts interleaved pass by pass.

    python -m perf.bench_calls --tree /path/to/old/checkout --tree . [--passes 6]

Each ``--tree`` serves an echo runner from its own process. Then, pass after
pass, a fresh client process per tree (its ``shmserve``) times calls for
``--budget`` seconds in each mode: ``sync`` (`run()` in a loop), ``async``
(one coroutine awaiting `async_run()` in turn) and ``async16`` (16 coroutines
at once, the time per call being the elapsed time over the calls), at 3 KB and
600 KB. The trees take turns within every pass, so the machine's drifting load
falls on both alike; the table gives each tree's median and p99 over all
passes, and the ratio of the medians to the first tree's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from .stats import percentiles
from .trees import tree_parser

_SERVER = r"""
import sys, shmserve
from perf.runnables import EchoRunnable
r = shmserve.Runner(EchoRunnable, name=sys.argv[1], arena_mb=32, max_batch_size=1, max_latency_ms=0)
with shmserve.start(r, workers=1):
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
"""

_CLIENT = r"""
import asyncio, sys, time, numpy as np, orjson, shmserve
name, budget = sys.argv[1], float(sys.argv[2])
out = {}
with shmserve.connect(name, timeout=60) as r:
    for size, n in (("3KB", 768), ("600KB", 153600)):
        x = np.ones(n, np.float32)
        for _ in range(20):
            r.echo.run(x)
        times = []
        end = time.perf_counter() + budget
        while time.perf_counter() < end:
            t = time.perf_counter(); r.echo.run(x); times.append(time.perf_counter() - t)
        out[f"sync_{size}"] = times

        async def one(times):
            end = time.perf_counter() + budget
            while time.perf_counter() < end:
                t = time.perf_counter(); await r.echo.async_run(x); times.append(time.perf_counter() - t)

        async def wide(times):
            async def caller():
                for _ in range(20):
                    await r.echo.async_run(x)
            end = time.perf_counter() + budget
            while time.perf_counter() < end:
                t = time.perf_counter(); await asyncio.gather(*(caller() for _ in range(16)))
                times.append((time.perf_counter() - t) / 320)

        async def main():
            for _ in range(20):
                await r.echo.async_run(x)
            out[f"async_{size}"] = []
            await one(out[f"async_{size}"])
            out[f"async16_{size}"] = []
            await wide(out[f"async16_{size}"])
        asyncio.run(main())
sys.stdout.write(orjson.dumps(out).decode())
"""


def _env(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{Path(__file__).resolve().parents[1]}",
                OMP_NUM_THREADS="1")


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    parser = tree_parser(__doc__ or "")
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per mode, size and pass")
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [Path(".")])]
    # `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH: run elsewhere
    scratch = tempfile.mkdtemp(prefix="shmserve-calls-")
    names = [f"bc{uuid.uuid4().hex[:8]}" for _ in trees]
    servers = []
    samples: list[dict[str, list[float]]] = [{} for _ in trees]
    try:
        for tree, name in zip(trees, names):
            srv = subprocess.Popen([sys.executable, "-c", _SERVER, name], env=_env(tree), cwd=scratch, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
            servers.append(srv)
            assert srv.stdout is not None
            if srv.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the echo runner of {tree} did not start")
        for _ in range(args.passes):
            for i, (tree, name) in enumerate(zip(trees, names)):
                got = subprocess.run([sys.executable, "-c", _CLIENT, name, str(args.budget)], env=_env(tree), cwd=scratch,
                                     capture_output=True, text=True, timeout=600, check=True)
                for key, times in orjson.loads(got.stdout).items():
                    samples[i].setdefault(key, []).extend(times)
    finally:
        for srv in servers:
            assert srv.stdin is not None
            srv.stdin.close()
        for srv in servers:
            try:
                srv.wait(timeout=60)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        os.rmdir(scratch)
    print(_table(trees, samples))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"calls_{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary = [{"tree": str(t), **{k: percentiles([v * 1e6 for v in s[k]]) for k in s}} for t, s in zip(trees, samples)]
    path.write_bytes(orjson.dumps({"args": {"passes": args.passes, "budget": args.budget},
                                   "load_average": os.getloadavg(), "runs": summary}, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _table(trees: list[Path], samples: list[dict[str, list[float]]]) -> str:
    lines = [f"load average {os.getloadavg()[0]:.1f}; µs per call, median (p99), ratio of medians to the first tree",
             f"{'figure':<16}" + "".join(f"{t.name[:24]:>34}" for t in trees)]
    for key in samples[0]:
        stats: list[dict[str, Any]] = [percentiles([v * 1e6 for v in s[key]]) for s in samples]
        base = stats[0]["p50"]
        lines.append(f"{key:<16}" + "".join(
            f"{st['p50']:>14.1f} ({st['p99']:>8.1f}) x{st['p50'] / base:>5.2f}" for st in stats))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
