"""Optional C accelerators for the hot path, each with a pure-Python twin.

A C source ``shmserve/_native/<name>.c`` is built by the package's own build
(setup.py) into ``shmserve._native._<name>``. Callers never import it directly:
``load("<name>")`` returns the module, or None when it was not built or when
``SHMSERVE_PURE_PYTHON=1`` is set, and the caller then uses its Python code.
Both paths are tested against each other (tests/unit/test_native*.py).

After editing a C file in a checkout: ``python setup.py build_ext --inplace``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["PURE_PYTHON_ENV", "forced_pure", "load"]

#: set to 1 to run every accelerated step in Python (the fallback is then what runs and is tested)
PURE_PYTHON_ENV = "SHMSERVE_PURE_PYTHON"


def forced_pure() -> bool:
    """True when the environment asks for the pure-Python path everywhere."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The built C module for ``name``, or None (not built, or pure Python forced)."""
    if forced_pure():
        return None
    try:
        return importlib.import_module(f"{__name__}._{name}")
    except ImportError:
        return None
