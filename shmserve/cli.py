"""The `shmserve` command line.

Each command group lives beside the code it drives and registers itself here:
``serve`` (shmserve.http.cli), ``models`` (shmserve.models.cli), ``config``
(shmserve.config.cli), ``build`` and ``k8s`` (shmserve.deploy.cli).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that define `register(subparsers)`; each adds its own subcommands.
COMMAND_MODULES: tuple[str, ...] = ("shmserve.models.cli", "shmserve.http.cli", "shmserve.config.cli", "shmserve.deploy.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmserve", description="Serve Python models over shared memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
