"""Where configuration values come from, and how they combine.

Four layers, lowest first: the schema's defaults (and, for runners, the
``Runner(...)`` arguments in code), the YAML file (``--config`` or
``SHMSERVE_CONFIG``), the environment (``SHMSERVE_CONFIG_OPTIONS``) and the
command-line flags. A higher layer replaces a lower one key by key. Each layer
is validated on its own, so an error names the layer it came from.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .. import settings
from ..errors import ConfigError
from .schema import RunnerSettings, ShmserveConfig

__all__ = ["CONFIG_ENV", "OPTIONS_ENV", "Layer", "read_file", "parse_options", "env_layers", "merge", "validate",
           "leaves", "lookup"]

CONFIG_ENV = "SHMSERVE_CONFIG"
OPTIONS_ENV = "SHMSERVE_CONFIG_OPTIONS"


@dataclass(frozen=True)
class Layer:
    """One source of values: a nested mapping as the user wrote it, and where it came from."""

    kind: str  # "file", "env" or "flag"
    origin: str  # the file path, the variable name, or "command line"
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.origin}"


def read_file(path: str | os.PathLike[str]) -> Layer:
    """Parse a ``shmserve.yaml``; an empty file is an empty layer."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(p)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {str(p)!r} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {str(p)!r} must hold a mapping (version:, api_server:, runners:), "
                          f"got a {type(data).__name__}")
    layer = Layer("file", str(p), data)
    validate(layer)
    return layer


def split_key(key: str) -> list[str]:
    """``runners.mlp.resources.nvidia.com/gpu`` -> ``["runners", "mlp", "resources", "nvidia.com/gpu"]``.

    Everything after ``resources`` is one resource name (they contain dots); a segment may
    also be quoted: ``runners."my.runner".timeout``.
    """
    parts = _split_quoted(key)
    if "resources" in parts[:-1]:
        i = parts.index("resources")
        parts = parts[: i + 1] + [".".join(parts[i + 1:])]
    return parts


def _split_quoted(key: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in key:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_options(text: str, origin: str = OPTIONS_ENV) -> Layer:
    """Parse ``"runners.mlp.batching.max_batch_size=32 api_server.workers=4"``; values are YAML scalars."""
    values: dict[str, Any] = {}
    for item in text.split():  # not shlex: a quoted key segment keeps its quotes for split_key
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{origin}: {item!r} is not KEY=VALUE (e.g. api_server.workers=4)")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        parts = split_key(key)
        if any(not p for p in parts):
            raise ConfigError(f"{origin}: {key!r} has an empty segment")
        node = values
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{origin}: {key!r} sets a key under {p!r}, which is also given a value")
            node = nxt
        node[parts[-1]] = value
    layer = Layer("env" if origin == OPTIONS_ENV else "flag", origin, values)
    validate(layer)
    return layer


def env_layers(environ: Mapping[str, str] | None = None, config_path: str | None = None) -> list[Layer]:
    """The file layer (from `config_path`, else ``SHMSERVE_CONFIG``) and the ``SHMSERVE_CONFIG_OPTIONS`` layer."""
    layers = []
    path = config_path or settings.config_file(environ)
    if path:
        layers.append(read_file(path))
    options = settings.config_options(environ)
    if options:
        layers.append(parse_options(options))
    return layers


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `over` replaces `base`."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def validate(layer: Layer | Mapping[str, Any], label: str = "") -> ShmserveConfig:
    """Validate one layer (or merged values); errors name the key, the value, what is allowed, the source."""
    values = layer.values if isinstance(layer, Layer) else layer
    label = layer.label if isinstance(layer, Layer) else label
    _check_runner_names(values, label)
    try:
        return ShmserveConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, values, label)) from None


def _check_runner_names(values: Mapping[str, Any], label: str) -> None:
    # A key under `runners` that is not a setting names a runner; one that is nearly a setting
    # ("batchng") is far more likely a typo than a runner.
    runners = values.get("runners")
    if not isinstance(runners, Mapping):
        return
    settings = _field_names(RunnerSettings)
    for key in runners:
        if key not in settings:
            near = difflib.get_close_matches(str(key), settings, n=1, cutoff=0.8)
            if near:
                raise ConfigError(f"runners.{key} ({label}): unknown key; did you mean runners.{near[0]}? "
                                  f"(a runner name here would override that runner's settings)")


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that holds the key at `loc` (None past a leaf)."""
    model: type[BaseModel] = ShmserveConfig
    for i, part in enumerate(loc[:-1]):
        if model is ShmserveConfig and i == 0 and part == "runners":
            model = _runners_model()
            continue
        if model is _runners_model() and part not in _field_names(model):
            model = RunnerSettings  # a runner's own section
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        ann = fields.get(str(part))
        sub = getattr(ann, "annotation", None) if ann is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _runners_model() -> type[BaseModel]:
    from .schema import RunnersSettings

    return RunnersSettings


def _describe(exc: ValidationError, values: Mapping[str, Any], label: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Union members add their type names to the location; keep only real keys.
        loc = tuple(p for p in loc if not _is_type_tag(p))
        key = ".".join(str(p) for p in loc) or "(top level)"
        src = f" ({label})" if label else ""
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = _field_names(model) if model is not None else []
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join(str(p) for p in loc[:-1] + (near[0],))}?" if near else ""
            lines.append(f"{key}{src}: unknown key{hint} Allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"{key} = {_show(err.get('input'))}{src}: {_allowed(err)}")
    # One message per key: union types report each member; the first reads best.
    seen: dict[str, str] = {}
    for line in lines:
        seen.setdefault(line.split(" ", 1)[0], line)
    return "invalid configuration:\n  " + "\n  ".join(seen.values())


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in {"int", "float", "str", "bool", "list", "none", "literal"}
                                      or part.startswith(("list[", "literal[", "constrained-", "union[")))


def _allowed(err: Any) -> str:
    msg = str(err["msg"])
    return msg[0].lower() + msg[1:] if msg else "invalid value"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def leaves(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) of a nested mapping, depth first."""
    for k, v in values.items():
        if isinstance(v, Mapping) and v:
            yield from leaves(v, prefix + (str(k),))
        else:
            yield prefix + (str(k),), v


def lookup(values: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    """(found, value) of `path` in a nested mapping."""
    node: Any = values
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return False, None
        node = node[p]
    return True, node
