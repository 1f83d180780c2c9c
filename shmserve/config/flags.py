"""Command-line flags declared by the schema (``json_schema_extra=flag("--port")``)."""
from __future__ import annotations

import argparse
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .layers import Layer
from .schema import ShmserveConfig

__all__ = ["FLAGS_ORIGIN", "schema_fields", "add_config_argument", "add_flags", "flags_layer", "flag_for"]

FLAGS_ORIGIN = "command line"
_DEST_PREFIX = "config:"


def schema_fields(model: type[BaseModel] = ShmserveConfig,
                  prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """(path, field) of every leaf key of the schema, in declaration order."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name,)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from schema_fields(sub, path)
        else:
            yield path, info


def _flag_of(info: FieldInfo) -> str | None:
    extra = info.json_schema_extra
    return extra.get("flag") if isinstance(extra, dict) else None  # type: ignore[return-value]


def flag_for(path: tuple[str, ...]) -> str | None:
    """The flag of the key at `path`, if it has one."""
    for p, info in schema_fields():
        if p == tuple(path):
            return _flag_of(info)
    return None


def add_config_argument(p: argparse.ArgumentParser, *names: str) -> None:
    """The ``--config FILE`` option (shared by every command that reads a configuration)."""
    p.add_argument(*(names or ("--config",)), dest="config_file", metavar="FILE", default=None,
                   help="shmserve.yaml to read (default: $SHMSERVE_CONFIG, else none)")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per schema key that declares one; its help shows the key and default."""
    for path, info in schema_fields():
        name = _flag_of(info)
        if name is None:
            continue
        kwargs: dict[str, Any] = {}
        ann = info.annotation
        optional = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) is typing.Union and len(optional) == 1:
            ann = optional[0]  # Optional[int]: the flag gives the int
        if typing.get_origin(ann) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(ann))
        elif ann is bool:
            kwargs["action"] = "store_true"  # a switch: the flag sets the key to true
        elif ann in (int, float, str):
            kwargs["type"] = ann
        if "choices" not in kwargs and ann is not bool:
            kwargs["metavar"] = path[-1].upper()
        parser.add_argument(name, dest=_DEST_PREFIX + ".".join(path), default=argparse.SUPPRESS,
                            help=f"{info.description} (config {'.'.join(path)}; default {info.default})", **kwargs)


def flags_layer(args: argparse.Namespace) -> Layer:
    """The flags given on the command line, as a configuration layer."""
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST_PREFIX):
            continue
        path = dest[len(_DEST_PREFIX):].split(".")
        node = values
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return Layer("flag", FLAGS_ORIGIN, values)
