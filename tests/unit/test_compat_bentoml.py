"""shmserve.compat.bentoml: BentoML's names for shmserve's objects, and the `bentoml` alias."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest

import shmserve
import shmserve.compat.bentoml as bentoml
from shmserve.compat.bentoml import _alias


def test_names_are_shmserve_objects():
    assert bentoml.Runnable is shmserve.Runnable and bentoml.Runner is shmserve.Runner
    assert bentoml.Service is shmserve.Service and bentoml.Context is shmserve.Context
    assert bentoml.io.NumpyNdarray is shmserve.io.NumpyNdarray and bentoml.io.Image is shmserve.io.Image
    assert bentoml.picklable_model is shmserve.picklable and bentoml.sklearn is shmserve.sklearn
    assert bentoml.models is shmserve.models
    with pytest.raises(AttributeError, match="Runner programming model"):
        bentoml.mount_asgi_app  # noqa: B018


@pytest.mark.skipif(importlib.util.find_spec("bentoml") is not None and "bentoml" not in sys.modules,
                    reason="a real BentoML is installed: the alias is (rightly) not made")
def test_bentoml_and_bentoml_io_alias_this_module():
    import bentoml as plain
    from bentoml.io import JSON

    assert plain is bentoml and JSON is shmserve.io.JSON


def test_alias_never_shadows_a_real_bentoml(monkeypatch):
    real = types.ModuleType("bentoml")
    monkeypatch.setitem(sys.modules, "bentoml", real)
    _alias()
    assert sys.modules["bentoml"] is real
