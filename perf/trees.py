"""Run one benchmark against several checkouts in turn, in one run, and keep the figures side by side.

The machine is shared and its load moves, so before/after figures are only
comparable when measured together: ``--tree OLD --tree NEW`` serves each
checkout's ``shmserve`` in turn, prints one table, and writes
``perf/results/<name>_<stamp>.json`` with the arguments and the load average.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .env import REPO

__all__ = ["compare_trees", "tree_parser"]


def compare_trees(name: str, args: argparse.Namespace,
                  run_tree: Callable[[Path, argparse.Namespace, Path], dict[str, Any]],
                  table: Callable[[list[dict[str, Any]]], str]) -> int:
    """``run_tree(tree, args, scratch_dir)`` for each ``args.tree`` (default: this checkout); print, save."""
    trees = [t.resolve() for t in (args.tree or [REPO])]
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"shmserve-{name}-") as tmp:
        for tree in trees:
            t0 = time.monotonic()
            runs.append(run_tree(tree, args, Path(tmp)))
            print(f"{tree}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print(table(runs))
    out = REPO / "perf" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps({"args": {k: v for k, v in vars(args).items() if k != "tree"},
                                   "load_average": os.getloadavg(), "runs": runs}, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def tree_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by `doc`'s first paragraph, with the repeatable ``--tree``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout whose shmserve to serve (repeatable)")
    return parser
