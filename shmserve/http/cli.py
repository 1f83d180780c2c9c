"""``shmserve serve``: run a Service over HTTP."""
from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["register", "run_serve", "serve_config"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand; its option flags come from the configuration schema."""
    from ..config.flags import add_config_argument, add_flags

    p = subparsers.add_parser(
        "serve",
        help="serve a Service over HTTP",
        description="Start the runner workers, API worker processes sharing one port, and a supervisor that "
                    "restarts crashed API workers and shuts everything down on SIGTERM/SIGINT. Settings come "
                    "from the defaults, then --config FILE (or $SHMSERVE_CONFIG), then "
                    "$SHMSERVE_CONFIG_OPTIONS, then these flags; `shmserve config show` prints the result.",
    )
    p.add_argument("service", help="the Service to serve, as module:attribute (e.g. service:svc); "
                                   "the module is imported from the current directory")
    add_config_argument(p)
    p.add_argument("--local-runners", action="store_true",
                   help="debugging: run each Runnable inside every API worker (runner.init_local()) "
                        "instead of in shared-memory runner workers")
    add_flags(p)
    p.set_defaults(func=run_serve)


def serve_config(args: argparse.Namespace) -> Any:
    """The effective `shmserve.config.Config` of a parsed ``serve`` command line."""
    from ..config import load
    from ..config.flags import flags_layer

    return load(args.config_file, flags_layer(args))


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve serve``."""
    from ..errors import ShmserveError
    from .serve import ServeOptions, serve

    log = logging.getLogger("shmserve.serve")
    try:
        config = serve_config(args)
    except ShmserveError as exc:
        logging.basicConfig(format="%(message)s")
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
    level = config.settings.api_server.logging.level
    logging.basicConfig(level=level, format="%(asctime)s serve %(levelname)s %(name)s: %(message)s")
    try:
        return serve(ServeOptions(service=args.service, config=config, local_runners=args.local_runners))
    except ShmserveError as exc:  # configuration, name clashes, runners that cannot start
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
