"""The loader of the optional C accelerators: absent or forced off means the Python path."""
from __future__ import annotations

import pytest

from shmserve import _native


def test_a_module_that_was_not_built_loads_as_none():
    assert _native.load("no_such_accelerator") is None


def test_pure_python_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(_native.PURE_PYTHON_ENV, "1")
    assert _native.forced_pure()
    monkeypatch.setenv(_native.PURE_PYTHON_ENV, "0")
    assert not _native.forced_pure()
