"""The model store: save a trained model once, serve it from any process.

::

    shmserve.pytorch.save_model("demo_mnist", model, signatures={"predict": {"batchable": True}})
    runner = shmserve.models.get("demo_mnist:latest").to_runner(max_batch_size=32)

    shmserve.models.list()                       # every stored version
    shmserve.models.export_model("demo_mnist", "/tmp")   # one archive file
    shmserve.models.import_model("/tmp/demo_mnist-<version>.shmmodel")
    shmserve.models.delete("demo_mnist:<version>")

The store lives under ``$SHMSERVE_HOME`` (default ``~/.shmserve``). Framework
adapters: `shmserve.pytorch`, `shmserve.sklearn`, `shmserve.onnx` and
`shmserve.picklable`; none of their libraries is imported until used.
"""
from __future__ import annotations

import os
from builtins import list as _list

from .archive import export_model, import_model
from .model import (
    CorruptModel,
    Model,
    ModelExists,
    ModelNotFound,
    ModelStoreError,
    Tag,
    UnknownFramework,
)
from .store import delete, get, list_models, store_home


def list(name: str | None = None, *, home: str | os.PathLike[str] | None = None) -> _list[Model]:  # noqa: A001
    """Every stored model version (or those of `name`), sorted by name then version."""
    return list_models(name, home=home)


__all__ = [
    "Model",
    "Tag",
    "list",
    "get",
    "delete",
    "export_model",
    "import_model",
    "store_home",
    "ModelStoreError",
    "ModelNotFound",
    "CorruptModel",
    "ModelExists",
    "UnknownFramework",
]
