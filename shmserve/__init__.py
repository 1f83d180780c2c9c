"""shmserve: serve Python models over shared memory, with adaptive batching.

Public API::

    shmserve.Runnable, shmserve.Runner      # model code and its configuration
    shmserve.start(*runners)                # spawn runner workers (context manager)
    shmserve.connect(name)                  # attach to running runner workers
    shmserve.Service                        # HTTP APIs over runners
    shmserve.io                             # HTTP IO descriptors
    shmserve.models                         # the model store
    shmserve.pytorch / sklearn / onnx / picklable   # framework adapters
    shmserve.xgboost / lightgbm / transformers / keras

Importing shmserve starts nothing and imports no optional dependency.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    ConfigError,
    InvalidInput,
    RunnerError,
    RunnerNameClash,
    RunnerNotStarted,
    RunnerOverloaded,
    RunnerTimeout,
    RunnerUnavailable,
    ShmserveError,
    TensorTooLarge,
)
from .runnable import Runnable
from .runner import Runner

__version__ = "0.1.0"

_LAZY = {
    "start": ("shmserve.worker.group", "start"),
    "connect": ("shmserve.client", "connect"),
    "Service": ("shmserve.service", "Service"),
    "Context": ("shmserve.context", "Context"),
    "io": ("shmserve.io", None),
    "models": ("shmserve.models", None),
    "pytorch": ("shmserve.models.pytorch", None),
    "sklearn": ("shmserve.models.sklearn", None),
    "onnx": ("shmserve.models.onnx", None),
    "picklable": ("shmserve.models.picklable", None),
    "xgboost": ("shmserve.models.xgboost", None),
    "lightgbm": ("shmserve.models.lightgbm", None),
    "transformers": ("shmserve.models.transformers", None),
    "keras": ("shmserve.models.keras", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'shmserve' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


__all__ = [
    "Runnable",
    "Runner",
    "Service",
    "Context",
    "start",
    "connect",
    "io",
    "models",
    "ConfigError",
    "InvalidInput",
    "RunnerError",
    "RunnerNameClash",
    "RunnerNotStarted",
    "RunnerOverloaded",
    "RunnerTimeout",
    "RunnerUnavailable",
    "ShmserveError",
    "TensorTooLarge",
]
