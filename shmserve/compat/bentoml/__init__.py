"""BentoML 1.1's public names on shmserve: change one import and a BentoML service runs.

::

    import shmserve.compat.bentoml as bentoml      # was: import bentoml
    from bentoml.io import JSON, NumpyNdarray      # unchanged: see below

    runner = bentoml.Runner(MyRunnable, name="my_runner")
    svc = bentoml.Service("my_service", runners=[runner])

Serve it with ``shmserve serve service:svc`` (not ``bentoml serve``).

Importing this module also makes ``bentoml`` and ``bentoml.io`` importable as
aliases of it, so a service's other ``from bentoml... import`` lines need no
change — but only when no real BentoML is installed or imported: it never
shadows the real package. With BentoML installed, write
``from shmserve.compat.bentoml.io import JSON`` instead.

The differences that remain are listed in the README ("Migrating from
BentoML 1.1"); each name here is the shmserve object itself, not a wrapper.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from ... import errors as exceptions
from ...context import Context
from ...runnable import Runnable
from ...runner import Runner
from ...service import Service
from ...strategy import DefaultStrategy, Strategy
from . import io

__all__ = ["Runnable", "Runner", "Service", "Context", "Strategy", "DefaultStrategy", "io", "models", "exceptions"]

#: BentoML framework module -> shmserve adapter module (imported on first use).
_FRAMEWORKS = {
    "pytorch": "shmserve.models.pytorch",
    "sklearn": "shmserve.models.sklearn",
    "onnx": "shmserve.models.onnx",
    "picklable_model": "shmserve.models.picklable",
    "xgboost": "shmserve.models.xgboost",
    "lightgbm": "shmserve.models.lightgbm",
    "transformers": "shmserve.models.transformers",
    "keras": "shmserve.models.keras",
}


def __getattr__(name: str) -> Any:
    if name == "models":
        value = importlib.import_module("shmserve.models")
    elif name in _FRAMEWORKS:
        try:
            value = importlib.import_module(_FRAMEWORKS[name])
        except ModuleNotFoundError as exc:
            if exc.name != _FRAMEWORKS[name]:
                raise
            raise AttributeError(f"shmserve has no {name!r} adapter; its adapters are shmserve.pytorch, sklearn, "
                                 "onnx and picklable (bentoml.picklable_model), and the ones shmserve.models lists") from None
    else:
        raise AttributeError(f"shmserve.compat.bentoml has no {name!r}: it covers the Runner programming model "
                             "(see the README's migration section for what is left out)")
    globals()[name] = value
    return value


def _alias() -> None:
    """Make ``import bentoml`` / ``from bentoml.io import ...`` find this module, when no real BentoML exists."""
    if "bentoml" in sys.modules:
        return  # the real one, or this alias already
    try:
        real = importlib.util.find_spec("bentoml")
    except (ImportError, ValueError):
        real = None
    if real is not None:
        return
    sys.modules["bentoml"] = sys.modules[__name__]
    sys.modules["bentoml.io"] = io


_alias()
