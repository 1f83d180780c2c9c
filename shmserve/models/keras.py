"""Keras 3 adapter: ``shmserve.keras.save_model / load_model / get``.

Models are stored in the native ``.keras`` format (``model.keras``: the
architecture as JSON plus the weights) and loaded with
``keras.saving.load_model(safe_mode=True)``, which refuses to deserialize
Python lambdas, so no code from the file runs. Custom layers must be
importable and registered (``keras.saving.register_keras_serializable``) where
the model is loaded, or passed as ``custom_objects=`` at save time: those are
pickled with the model (trusted stores only) and handed to Keras on load.

Keras picks its backend when first imported, from ``KERAS_BACKEND``. The
backend a model was saved with is recorded, and a worker whose environment
sets none imports Keras with that backend (e.g. ``torch``).

Signature names: ``predict`` calls ``model.predict(x, verbose=0)`` (the
default, not batchable: save with ``{"predict": {"batchable": True}}`` to let
the runner join concurrent calls row-wise); ``__call__`` calls the model
itself and returns numpy arrays; other names call that method. With the torch
backend the runner takes torch's thread count from ``OMP_NUM_THREADS`` (set
by the resource strategy) and uses the GPU its worker was given.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import CPU_AND_GPU, ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, save_signatures, signature_target, use_torch_threads
from .store import Model, SaveArgs, Tag

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "keras"
MODEL_FILE = "model.keras"


def _keras(backend: str | None = None) -> Any:
    if backend and "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", backend)  # read by keras once, at its first import
    return require("keras", "shmserve.keras needs Keras 3 and a backend: pip install 'shmserve[keras]' torch")


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save a ``keras.Model`` (Keras 3) as a new version of `name`.

    `save` takes `labels`, `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"shmserve.keras.save_model needs a keras.Model (Keras 3), got {type(model).__name__}")
    sigs = save_signatures(model, signatures, "predict")
    options = {"format": "keras", "file": MODEL_FILE, "backend": str(keras.backend.backend()), "trusted_only": False}
    return store_model(name, lambda folder: model.save(str(folder / MODEL_FILE)), framework=FRAMEWORK,
                       framework_version=str(keras.__version__), signatures=sigs, options=options, **save)


def load_model(tag: "str | Tag | Model", *, compile: bool = False, home: str | os.PathLike[str] | None = None) -> Any:  # noqa: A002
    """The stored ``keras.Model`` (``safe_mode=True``; the model's custom objects, if any, are unpickled and passed on)."""
    stored = resolve(tag, FRAMEWORK, home)
    keras = _keras(str(stored.options.get("backend", "")) or None)
    return keras.saving.load_model(
        str(stored.path_of(str(stored.options.get("file", MODEL_FILE)))),
        custom_objects=stored.custom_objects or None,
        compile=compile,
        safe_mode=True,
    )


class KerasRunnable(ModelRunnable):
    """Hosts one stored Keras model; methods come from its signatures."""

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = CPU_AND_GPU
    FRAMEWORK: ClassVar[str] = FRAMEWORK

    def setup(self, model: Model) -> None:
        self.model = load_model(model)
        self.keras = _keras()
        if self.keras.backend.backend() == "torch":
            use_torch_threads(require("torch", "the torch backend of Keras needs torch"))

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method == "predict":
            return self.model.predict(*args, **{"verbose": 0, **kwargs})
        out = signature_target(self.model, method)(*args, **kwargs)
        return self.keras.tree.map_structure(self.keras.ops.convert_to_numpy, out)


get, runnable_class, __getattr__ = adapter_functions(KerasRunnable, "Keras model")
