"""``shmserve serve``: run a Service over HTTP."""
from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["register", "run_serve", "serve_config"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand; its option flags come from the configuration schema."""
    from ..config.flags import add_config_argument, add_flags
    from ..config.serve import add_serve_arguments

    p = subparsers.add_parser(
        "serve",
        help="serve a Service over HTTP",
        description="Start the runner workers, API worker processes sharing one port, and a supervisor that "
                    "restarts crashed API workers and shuts everything down on SIGTERM/SIGINT. Settings come "
                    "from the defaults, then --config FILE (or $SHMSERVE_CONFIG), then "
                    "$SHMSERVE_CONFIG_OPTIONS, then these flags; `shmserve config show` prints the result.",
    )
    add_serve_arguments(p)  # the service, --local-runners: `ServeConfig`'s own fields
    add_config_argument(p)
    add_flags(p)  # one flag per shmserve.yaml key that declares one
    p.set_defaults(func=run_serve)


def serve_config(args: argparse.Namespace) -> Any:
    """The effective `shmserve.config.Config` of a parsed ``serve`` command line."""
    from ..config import load
    from ..config.flags import flags_layer

    return load(args.config_file, flags_layer(args))


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve serve``."""
    from ..config.serve import ServeConfig
    from ..errors import ShmserveError
    from .serve import serve

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
        return serve(ServeConfig.from_args(args, config))
    except ShmserveError as exc:  # configuration, name clashes, runners that cannot start
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
