"""``shmserve config show``: the effective configuration of a service and where each value came from."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register", "load_for_service", "shm_budget"]


def register(subparsers: Any) -> None:
    """Add the ``config`` command group."""
    from .flags import add_config_argument

    p = subparsers.add_parser("config", help="inspect the configuration",
                              description="Inspect shmserve.yaml as a service would see it.")
    sub = p.add_subparsers(dest="config_command", metavar="COMMAND")
    sub.required = True
    show = sub.add_parser("show", help="print the effective configuration and the source of each value",
                          description="Print every effective value for SERVICE (defaults, the Runner arguments in "
                                      "code, --config FILE or $SHMSERVE_CONFIG, $SHMSERVE_CONFIG_OPTIONS) and "
                                      "where it came from.")
    show.add_argument("service", help="the Service, as module:attribute (imported from the current directory)")
    add_config_argument(show)
    show.add_argument("--yaml", action="store_true", help="print a complete shmserve.yaml instead of the table")
    show.set_defaults(func=run_show)


def load_for_service(service: str, config_file: str | None) -> tuple[Any, Any]:
    """Import `service` (working directory first on sys.path) and load its configuration, checked
    against its runners. Returns ``(service, config)``."""
    from ..service import load_service
    from . import load

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    svc = load_service(service)
    config = load(config_file)
    config.check_runners(svc.runners)
    return svc, config


def run_show(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve config show``."""
    from ..errors import ShmserveError

    try:
        svc, config = load_for_service(args.service, args.config_file)
        if args.yaml:
            sys.stdout.write(config.to_yaml(svc.runners))
            return 0
        rows = config.describe(svc.runners)
        b = shm_budget(svc, config)
        shm = f"{b.total_mib} MiB ({b.describe()})"
    except ShmserveError as exc:
        print(f"shmserve config show: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    width = max(len(k) for k, _, _ in rows)
    vwidth = max(len(json.dumps(v)) for _, v, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}}  {json.dumps(value):<{vwidth}}  {source}")
    print(f"# /dev/shm needed: {shm}")
    return 0


def shm_budget(svc: Any, config: Any) -> Any:
    """The /dev/shm budget (`shmserve.shm.budget.ShmBudget`) of `svc` deployed with `config`.

    Applies `config` to the runners, as for another machine (GPU counts are not checked here)."""
    from ..shm import budget

    config.apply(svc.runners, on_this_host=False)
    served = [r for r in svc.runners if not getattr(r, "embedded", False)]
    return budget.runners_budget(served, clients=config.settings.api_server.workers)
