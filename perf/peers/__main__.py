"""`python -m perf.peers list` / `python -m perf.peers serve NAME [--port P]`: run a peer by hand.

The suite itself starts peers through `perf.peers.servers`; this is for looking
at one peer alone (e.g. to load it with wrk yourself).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .servers import PEERS, VENVS


def main(argv: Sequence[str] | None = None) -> int:
    """List the peers or serve one until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m perf.peers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="which peers are installed")
    serve = sub.add_parser("serve", help="serve the common workload with one peer")
    serve.add_argument("name", choices=[p.name for p in PEERS])
    serve.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.command == "list":
        for p in PEERS:
            state = f"installed ({p.version()})" if p.installed() else f"not installed (bash perf/peers/install.sh {p.name})"
            print(f"{p.name:8} {state}; POST {p.route}; bodies: {', '.join(p.bodies)}")
        return 0
    spec = next(p for p in PEERS if p.name == args.name)
    if not spec.installed():
        print(f"{spec.name} is not installed in {VENVS / spec.name}: run `bash perf/peers/install.sh {spec.name}`",
              file=sys.stderr)
        return 1
    from pathlib import Path

    from ..procs import stop

    log = Path("/dev/stdout")
    proc = spec.start(args.port, log)
    print(f"{spec.name} serving on http://127.0.0.1:{args.port}{spec.route} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return stop(proc, group=True) or 0


if __name__ == "__main__":
    sys.exit(main())
