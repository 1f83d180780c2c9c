"""`ServeConfig`: everything ``shmserve serve`` runs with, in one frozen object.

The command line is built from it: each field that the command line sets declares its argument
(``serve_argument``), with its help and default, and `add_serve_arguments` adds them; the
``shmserve.yaml`` keys (``--port``, ``--api-workers``, ...) are flags generated from the schema
(`shmserve.config.flags`) and arrive validated, as the `Config` in the ``config`` field. The
supervisor (`shmserve.http.serve`) gets a `ServeConfig` and hands it on, unchanged, to every
API worker (`shmserve.http.api_worker.APIWorkerSpec`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .resolve import Config

__all__ = ["ServeConfig", "serve_argument", "add_serve_arguments"]


def serve_argument(name: str, help: str) -> dict[str, Any]:
    """Field metadata of a `ServeConfig` field set on the command line by argument `name`
    (``--flag``, or a bare name for a positional argument)."""
    return {"argument": name, "help": help}


@dataclass(frozen=True)
class ServeConfig:
    """What ``shmserve serve`` serves and how; picklable, so it crosses the spawn boundary."""

    #: the Service, as ``module:attribute``
    service: str = field(metadata=serve_argument(
        "service", "the Service to serve, as module:attribute (e.g. service:svc); the module is imported from "
                   "the current directory"))
    #: the validated ``shmserve.yaml`` (defaults, file, ``SHMSERVE_CONFIG_OPTIONS``, flags)
    config: Config = field(default_factory=Config)
    #: debugging: every API worker runs each Runnable itself (``runner.init_local()``)
    local_runners: bool = field(default=False, metadata=serve_argument(
        "--local-runners", "debugging: run each Runnable inside every API worker (runner.init_local()) instead of "
                           "in shared-memory runner workers"))
    #: the directory the service is imported from (put first on ``sys.path``)
    cwd: str = field(default_factory=os.getcwd)

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: Config) -> "ServeConfig":
        """The `ServeConfig` of a parsed command line (see `add_serve_arguments`) and its `config`."""
        given = {f.name: getattr(args, f.name) for f in _argument_fields()}
        return cls(config=config, **given)


def _argument_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(ServeConfig) if "argument" in f.metadata]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add an argument for each `ServeConfig` field the command line sets, with the field's default."""
    for f in _argument_fields():
        name, help_text = f.metadata["argument"], f.metadata["help"]
        if not name.startswith("-"):
            parser.add_argument(name, help=help_text)
        elif f.type in (bool, "bool"):
            parser.add_argument(name, dest=f.name, action="store_true", default=f.default, help=help_text)
        else:
            raise TypeError(f"ServeConfig.{f.name}: a command-line field is a positional argument or a switch")
