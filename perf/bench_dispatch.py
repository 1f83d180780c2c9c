"""The dispatch loop's fairness: one client's full result arena, and calls due before the running batch ends.

    python -m perf.bench_dispatch                                        # this tree
    python -m perf.bench_dispatch --tree /path/to/old/checkout --tree .  # side by side, one run

Each tree's ``shmserve`` runs one runner worker (in a child interpreter), and two figures are measured:

* ``parked``: client A holds 3 MB of its 4 MB result arena and asks for a 2 MB result, which
  finds no room; meanwhile client B (another channel to the same worker) makes a small call.
  B's round trip is timed, and also with nobody blocked (``idle``). A dispatch loop that waits
  for A's room stalls B for as long as the result may wait (2 s).
* ``admit``: while a batch of a method measured at 50 ms runs, a call due in 20 ms is made;
  the time until its caller hears the answer is timed, and the answer counted by kind. A
  caller told when the running batch ends refuses it at once (RunnerOverloaded); otherwise
  it is sent and times out at its deadline.

Trees run in turn within one run; the machine may be shared and noisy (the load average is
saved with the figures in ``perf/results/dispatch_<stamp>.json``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson

from .trees import compare_trees, tree_parser

CHILD = textwrap.dedent('''
    import statistics, sys, threading, time, uuid

    import numpy as np
    import orjson

    import shmserve


    class Bench(shmserve.Runnable):
        SUPPORTED_RESOURCES = ("cpu",)
        SUPPORTS_CPU_MULTI_THREADING = False

        @shmserve.Runnable.method(batchable=False)
        def big(self, nbytes: int) -> np.ndarray:
            return np.ones(nbytes, dtype=np.uint8)

        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def slow(self, x: np.ndarray) -> np.ndarray:
            time.sleep(float(x[0, 0]))
            return x


    def attempt(f):
        try:
            f()
            return "ok"
        except shmserve.ShmserveError as exc:
            return type(exc).__name__


    def parked(r, name, rounds):
        idle, blocked = [], []
        with shmserve.connect(name) as b:
            for _ in range(20):
                b.big.run(10)
            for _ in range(rounds * 3):
                t0 = time.perf_counter()
                b.big.run(10)
                idle.append(time.perf_counter() - t0)
            for _ in range(rounds):
                held = [r.big.run(1 << 20) for _ in range(3)]
                a = threading.Thread(target=attempt, args=(lambda: r.big.run(2 << 20),))
                a.start()
                time.sleep(0.05)  # A's call reaches the worker and finds no room
                t0 = time.perf_counter()
                b.big.run(10)
                blocked.append(time.perf_counter() - t0)
                del held
                a.join()
        return idle, blocked


    def admit(r, rounds):
        for _ in range(8):
            r.slow.run(np.array([[0.05]]))
        times, kinds = [], {}
        for _ in range(rounds):
            a = threading.Thread(target=attempt, args=(lambda: r.slow.run(np.array([[0.05]]), timeout=5),))
            a.start()
            time.sleep(0.01)  # its batch is running
            t0 = time.perf_counter()
            kind = attempt(lambda: r.slow.run(np.array([[0.0]]), timeout=0.02))
            times.append(time.perf_counter() - t0)
            kinds[kind] = kinds.get(kind, 0) + 1
            a.join()
        return times, kinds


    if __name__ == "__main__":
        rounds = int(sys.argv[1])
        name = f"bd{uuid.uuid4().hex[:8]}"
        r = shmserve.Runner(Bench, name=name, arena_mb=4, max_latency_ms=1)
        with shmserve.start(r, workers=1):
            idle, blocked = parked(r, name, rounds)
            times, kinds = admit(r, rounds * 6)
        print(orjson.dumps({"idle": idle, "blocked": blocked, "admit": times, "admit_kinds": kinds}).decode())
''')


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def run_tree(tree: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    script = scratch / "dispatch_child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script), str(args.rounds)], env=env, cwd=scratch,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: the benchmark failed:\n{out.stderr[-4000:]}")
    data = orjson.loads(out.stdout.strip().splitlines()[-1])
    figures = {f"{k}_{q}_ms": _q(data[k], p) * 1e3 for k in ("idle", "blocked", "admit")
               for q, p in (("p50", 0.5), ("p99", 0.99))}
    return {"tree": str(tree), **figures, "admit_kinds": data["admit_kinds"]}


def table(runs: list[dict[str, Any]]) -> str:
    rows = ["| tree | B idle p50 / p99 | B while A's arena is full p50 / p99 | call due before the batch ends: "
            "answered p50 / p99, kinds |", "| --- | --- | --- | --- |"]
    for r in runs:
        rows.append(f"| {r['tree']} | {r['idle_p50_ms']:.2f} / {r['idle_p99_ms']:.2f} ms | "
                    f"{r['blocked_p50_ms']:.2f} / {r['blocked_p99_ms']:.2f} ms | "
                    f"{r['admit_p50_ms']:.2f} / {r['admit_p99_ms']:.2f} ms, {r['admit_kinds']} |")
    if len(runs) == 2:
        old, new = runs
        rows.append("")
        rows.append(f"new/old: B while A's arena is full p50 {new['blocked_p50_ms'] / old['blocked_p50_ms']:.4f}; "
                    f"due-before-batch-end answered p99 {new['admit_p99_ms'] / old['admit_p99_ms']:.3f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__ or "")
    parser.add_argument("--rounds", type=int, default=5, help="rounds with A's arena full (admit: 6x as many)")
    return compare_trees("dispatch", parser.parse_args(argv), run_tree, table)


if __name__ == "__main__":
    sys.exit(main())
