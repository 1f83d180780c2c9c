"""How long one connection's pipelined read holds the event loop, in-process, trees side by side.

    python -m perf.bench_pipeline --tree /path/to/old/checkout --tree .   # one run, side by side

A slow reader pipelines small ``GET`` requests: one 64 KiB read holds ~1,400 of
them. For each ``--tree`` a fresh process imports that tree's
``shmserve.http.protocol``, connects one `HttpProtocol` to a fake transport
(it never pushes back) and an application that answers each request at once
with ``--answer-bytes`` bytes, and feeds it one such read on a running event
loop. Each turn of the loop is timed (CPU time of the process, which the
machine's load does not inflate) until every request is answered: ``max_turn_ms``
is the longest any other connection would have waited behind this one,
``total_ms`` all the work, ``turns`` how many turns it was spread over.
``--repeats`` reads per tree (medians reported, with the range). This isolates
the server's part of the slow-reader attack of ``perf.bench_attack``, whose
honest-client latencies on a shared machine are too noisy to show it.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .env import REPO
from .trees import compare_trees, tree_parser

_CHILD = r'''
import asyncio, json, sys, time
from shmserve.http.protocol import HttpProtocol, ServerState

GET = b"GET /docs.json HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
answer = b"x" * int(sys.argv[1])
repeats = int(sys.argv[2])

class Transport:
    def __init__(self): self.written = 0
    def write(self, data): self.written += 1
    def close(self): pass
    def abort(self): pass
    def pause_reading(self): pass
    def resume_reading(self): pass
    def get_write_buffer_size(self): return 0
    def get_extra_info(self, name, default=None): return default

class App:
    def dispatch(self, request, conn): conn.reply(200, b"application/json", answer)

async def one():
    data = GET * (65536 // len(GET))
    n = data.count(b"GET ")
    tr = Transport()
    proto = HttpProtocol(App(), ServerState())
    proto.connection_made(tr)
    clock = time.process_time
    t0 = clock()
    proto.data_received(data)
    turns = [clock() - t0]
    while tr.written < n:
        t0 = clock()
        await asyncio.sleep(0)  # one turn of the loop: the callbacks it runs are timed
        turns.append(clock() - t0)
        if len(turns) > 100000:
            raise SystemExit("not every request was answered")
    return {"requests": n, "max_turn_ms": max(turns) * 1e3, "total_ms": sum(turns) * 1e3,
            "turns": sum(1 for t in turns if t > 0)}

async def main():
    await one()  # warm-up
    return [await one() for _ in range(repeats)]

print(json.dumps(asyncio.run(main())))
'''


def run_tree(tree: Path, args: Any, scratch: Path) -> dict[str, Any]:
    """One child process against `tree`'s shmserve: the figures of each read."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(args.answer_bytes), str(args.repeats)], env=env,
                         cwd=scratch, capture_output=True, text=True, timeout=600, check=True)
    return {"tree": str(tree), "reads": json.loads(out.stdout.splitlines()[-1])}


def table(runs: list[dict[str, Any]]) -> str:
    """Median (range) of each figure per tree."""
    lines = ["| tree | requests per read | max_turn_ms | total_ms | turns |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        reads = r["reads"]
        cells = []
        for key in ("max_turn_ms", "total_ms", "turns"):
            got = [x[key] for x in reads]
            cells.append(f"{statistics.median(got):.2f} ({min(got):.2f}-{max(got):.2f})")
        lines.append(f"| {Path(r['tree']).name} | {reads[0]['requests']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = tree_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="reads per tree")
    parser.add_argument("--answer-bytes", type=int, default=5000, help="size of each answer's body")
    args = parser.parse_args(argv)
    args.tree = args.tree or [REPO]
    return compare_trees("pipeline", args, run_tree, table)


if __name__ == "__main__":
    raise SystemExit(main())
