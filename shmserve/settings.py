"""Every ``SHMSERVE_*`` environment variable, declared and parsed in this one module.

`VARIABLES` declares each one with its meaning and parser; the README lists
them (a test keeps the two in step).

Each variable is parsed where it is first needed, not at import (importing
shmserve reads nothing), and once per distinct value: the parsed value is
cached against the raw text, so tests and tools that change the environment
see the change. A value outside what a variable accepts raises `InvalidSetting`
naming the variable and what it takes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidSetting

__all__ = ["VARIABLES", "Variable", "value", "home", "runtime_dir", "config_file", "config_options", "spin_s",
           "name_tag", "gpu_batch", "cuda_dir", "cuda_ipc_max_idle"]

log = logging.getLogger("shmserve")

GPU_BATCH_METHODS = ("auto", "kernel", "cat")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, what it means, and how its text becomes a value."""

    name: str
    meaning: str
    parse: Callable[[str], Any]  # the text of a set, non-empty variable -> value; raises ValueError
    default: Any = None  # the value when the variable is unset or empty


def _spin(text: str) -> float:
    try:
        us = float(text)
    except ValueError:
        raise ValueError("must be a number of microseconds") from None
    return max(0.0, us) / 1e6


def _tag(text: str) -> str:
    if text.isalnum() and len(text) <= 8:
        return text
    # Kept lenient (the tag only helps tell test sessions apart), but not silent.
    log.warning("SHMSERVE_NAME_TAG=%r is ignored: it takes up to 8 letters or digits", text)
    return ""


def _gpu_batch(text: str) -> str:
    if text not in GPU_BATCH_METHODS:
        raise ValueError(f"must be one of {', '.join(GPU_BATCH_METHODS)}")
    return text


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if n < 0:
        raise ValueError("must not be negative")
    return n


def _path(text: str) -> Path:
    return Path(text).expanduser()


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("SHMSERVE_HOME", "root of the model store (default ~/.shmserve)", _path),
    Variable("SHMSERVE_RUNTIME_DIR", "private directory of registry files, sockets and leases "
                                     "(default /tmp/shmserve-<uid>)", Path),
    Variable("SHMSERVE_CONFIG", "path of the shmserve.yaml that `shmserve serve` reads", str, ""),
    Variable("SHMSERVE_CONFIG_OPTIONS", "space-separated key=value overrides of the configuration", str.strip, ""),
    Variable("SHMSERVE_SPIN_US", "microseconds a waiter polls before it sleeps; 0 turns polling off", _spin, 50e-6),
    Variable("SHMSERVE_NAME_TAG", "up to 8 letters or digits that start every shared-memory name", _tag, ""),
    Variable("SHMSERVE_GPU_BATCH", "how CUDA tensors of several calls are joined: auto, kernel or cat",
             _gpu_batch, "auto"),
    Variable("SHMSERVE_CUDA_DIR", "folder holding the CUDA kernel source gather.cu", _path),
    Variable("SHMSERVE_CUDA_IPC_MAX_IDLE", "opened CUDA IPC handles kept mapped while unused", _count, 32),
)}

_parsed: dict[tuple[str, str], Any] = {}


def value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of variable `name` in `environ` (default: ``os.environ``)."""
    var = VARIABLES[name]
    text = (os.environ if environ is None else environ).get(name, "")
    if not text:
        return var.default
    key = (name, text)
    if key in _parsed:
        return _parsed[key]
    try:
        parsed = var.parse(text)
    except ValueError as exc:
        raise InvalidSetting(f"{name} {exc}, got {text!r} ({var.meaning})") from None
    if len(_parsed) < 256:  # bounded: a program that keeps changing a variable does not grow this
        _parsed[key] = parsed
    return parsed


def home() -> Path | None:
    """``$SHMSERVE_HOME``, or None for the default."""
    return value("SHMSERVE_HOME")  # type: ignore[no-any-return]


def runtime_dir() -> Path:
    """``$SHMSERVE_RUNTIME_DIR``, else ``/tmp/shmserve-<uid>``."""
    path = value("SHMSERVE_RUNTIME_DIR")
    return path if path is not None else Path(f"/tmp/shmserve-{os.getuid()}")


def config_file(environ: Mapping[str, str] | None = None) -> str:
    """``$SHMSERVE_CONFIG`` ('' when unset)."""
    return value("SHMSERVE_CONFIG", environ)  # type: ignore[no-any-return]


def config_options(environ: Mapping[str, str] | None = None) -> str:
    """``$SHMSERVE_CONFIG_OPTIONS``, stripped ('' when unset)."""
    return value("SHMSERVE_CONFIG_OPTIONS", environ)  # type: ignore[no-any-return]


def spin_s() -> float:
    """``$SHMSERVE_SPIN_US`` in seconds (negative values are 0)."""
    return value("SHMSERVE_SPIN_US")  # type: ignore[no-any-return]


def name_tag() -> str:
    """``$SHMSERVE_NAME_TAG`` when it is up to 8 letters or digits, else '' (with a warning)."""
    return value("SHMSERVE_NAME_TAG")  # type: ignore[no-any-return]


def gpu_batch() -> str:
    """``$SHMSERVE_GPU_BATCH``: auto, kernel or cat."""
    return value("SHMSERVE_GPU_BATCH")  # type: ignore[no-any-return]


def cuda_dir() -> Path | None:
    """``$SHMSERVE_CUDA_DIR``, or None for the source tree's ``cuda/`` folder."""
    return value("SHMSERVE_CUDA_DIR")  # type: ignore[no-any-return]


def cuda_ipc_max_idle() -> int:
    """``$SHMSERVE_CUDA_IPC_MAX_IDLE``."""
    return value("SHMSERVE_CUDA_IPC_MAX_IDLE")  # type: ignore[no-any-return]
