"""Command line of the perf suite: run, compare, report. See perf/README.md."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .env import THREAD_ENV

# Numeric libraries read these when first imported: set them before anything imports numpy.
for _k, _v in THREAD_ENV.items():
    os.environ.setdefault(_k, _v)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m perf` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m perf", description="shmserve's performance suite.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="measure and write perf/results/<stamp>.json (+ report)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="under 2 minutes on 2 cores")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the default; under 15 minutes")
    mode.add_argument("--check", dest="mode", action="store_const", const="check",
                      help="correctness parts only, no timing (for CI)")
    run.set_defaults(mode="full")
    run.add_argument("--only", default="", help="comma list of sections: transport,batching,http")
    run.add_argument("--peers", default=None,
                     help="comma list of peers to load beside shmserve (bentoml,mosec), 'none', or 'auto' "
                          "(every installed one); default: auto for --full, none for --quick")
    run.add_argument("--out", default=None, help="result JSON path (default perf/results/<stamp>_<mode>.json)")
    run.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    cmp_ = sub.add_parser("compare", help="compare two result files; exit 1 on a regression")
    cmp_.add_argument("baseline")
    cmp_.add_argument("current")
    cmp_.add_argument("--tolerances", default=None, help="tolerance file (default perf/tolerances.json)")
    cmp_.add_argument("--strict", action="store_true",
                      help="do not widen tolerances to the figures' measured spread across passes")
    rep = sub.add_parser("report", help="write the Markdown + PNG report of a result file")
    rep.add_argument("result")
    rep.add_argument("--out", default=None, help="Markdown path (default: beside the result, .md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m perf`."""
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        from .compare import main as compare_main

        return compare_main(args.baseline, args.current, args.tolerances, args.strict)
    if args.command == "report":
        from pathlib import Path

        from .report import write
        from .results import ResultSet

        rs = ResultSet.load(args.result)
        out = Path(args.out) if args.out else Path(args.result).with_suffix(".md")
        print(f"report: {write(rs, out)}")
        return 0
    from .suite import run_suite

    return run_suite(args.mode, only=args.only, peers=args.peers, out=args.out, report=not args.no_report)


if __name__ == "__main__":
    sys.exit(main())
