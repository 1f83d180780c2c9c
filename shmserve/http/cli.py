"""``shmserve serve``: run a Service over HTTP."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from .server import HttpConfig

__all__ = ["register", "run_serve"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve a Service over HTTP",
        description="Start the runner workers, API worker processes sharing one port, and a supervisor that "
                    "restarts crashed API workers and shuts everything down on SIGTERM/SIGINT.",
    )
    p.add_argument("service", help="the Service to serve, as module:attribute (e.g. service:svc); "
                                   "the module is imported from the current directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port to listen on; 0 picks a free one (default 3000)")
    p.add_argument("--api-workers", type=int, default=1, help="number of HTTP worker processes (default 1)")
    p.add_argument("--local-runners", action="store_true",
                   help="debugging: run each Runnable inside every API worker (runner.init_local()) "
                        "instead of in shared-memory runner workers")
    p.add_argument("--threads", type=int, default=4, help="thread pool size per API worker for non-async APIs")
    p.add_argument("--max-body-size", type=float, default=64.0,
                   help="largest request body in MiB; larger ones get 413 (default 64)")
    p.add_argument("--keepalive-timeout", type=float, default=5.0, help="seconds an idle connection stays open")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on shutdown (default 30)")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds API workers get to import the service and attach to runners")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve serve``."""
    from ..errors import ShmserveError
    from ..worker.serve import ServeOptions, serve

    logging.basicConfig(level=args.log_level, format="%(asctime)s serve %(levelname)s %(name)s: %(message)s")
    options = ServeOptions(
        service=args.service,
        host=args.host,
        port=args.port,
        api_workers=args.api_workers,
        local_runners=args.local_runners,
        threads=args.threads,
        startup_timeout=args.startup_timeout,
        log_level=args.log_level,
        http=HttpConfig(
            max_body_bytes=int(args.max_body_size * 1024 * 1024),
            keepalive_timeout=args.keepalive_timeout,
            graceful_timeout=args.graceful_timeout,
        ),
    )
    try:
        return serve(options)
    except ShmserveError as exc:  # configuration, name clashes, runners that cannot start
        logging.getLogger("shmserve.serve").error("%s: %s", type(exc).__name__, exc)
        return 2
