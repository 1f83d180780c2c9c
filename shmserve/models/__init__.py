"""The model store: save a trained model once, serve it from any process.

::

    shmserve.pytorch.save_model("demo_mnist", model, signatures={"predict": {"batchable": True}})
    runner = shmserve.models.get("demo_mnist:latest").to_runner(max_batch_size=32)

    shmserve.models.list()                       # every stored version
    shmserve.models.export_model("demo_mnist", "/tmp")   # one archive file
    shmserve.models.import_model("/tmp/demo_mnist-<version>.shmmodel")
    shmserve.models.delete("demo_mnist:<version>")

    with shmserve.models.create("my_model", metadata={"acc": 0.9}) as draft:
        (draft.path / "weights.bin").write_bytes(data)   # published atomically on exit

Every ``save_model`` takes ``custom_objects={"name": obj}``: pickled beside the
model, back as ``model.custom_objects`` (trusted stores only: unpickling can
run code). ``model.info`` carries ``metadata``, ``labels``, ``signatures`` and
``creation_time`` as BentoML's ``ModelInfo`` does.

The store lives under ``$SHMSERVE_HOME`` (default ``~/.shmserve``). Framework
adapters: `shmserve.pytorch`, `shmserve.sklearn`, `shmserve.onnx`,
`shmserve.picklable`, `shmserve.xgboost`, `shmserve.lightgbm`,
`shmserve.transformers` and `shmserve.keras`; none of their libraries is
imported until used.
"""
from __future__ import annotations

import os
from builtins import list as _list

from .archive import export_model, import_model
from .model import (
    CorruptModel,
    Model,
    ModelContext,
    ModelExists,
    ModelInfo,
    ModelNotFound,
    ModelStoreError,
    Tag,
    UnknownFramework,
)
from .store import ModelDraft, delete, get, list_models, store_home
from .store import create_model as create


def list(name: str | None = None, *, home: str | os.PathLike[str] | None = None) -> _list[Model]:  # noqa: A001
    """Every stored model version (or those of `name`), sorted by name then version."""
    return list_models(name, home=home)


__all__ = [
    "Model",
    "ModelInfo",
    "ModelContext",
    "ModelDraft",
    "Tag",
    "create",
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
