"""Generic adapter for plain Python callables and objects:
``shmserve.picklable.save_model / load_model / get``.

Objects are saved with cloudpickle when it is installed (so functions and
classes defined in ``__main__`` or a notebook survive), else with pickle.
Loading runs pickle: load only from a store you trust (the manifest marks it
``options.trusted_only``).

Signature ``__call__`` calls the object itself; ``predict`` calls the
object's ``predict`` method when it has one and the object itself otherwise;
any other name calls that method. Without signatures a callable object gets
``__call__`` (the runner's default method), plus ``predict`` when it has one;
an object that is not callable gets ``predict``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import default_signatures, signature_target
from .objects import pickler, require_unpickler
from .store import Model, SaveArgs, Tag, normalize_signatures

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "picklable"
MODEL_FILE = "model.pkl"


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save any picklable callable or object as a new version of `name`.

    Without `signatures`: ``__call__``, plus ``predict`` when the object has one.
    `save` takes `labels`, `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    sigs = normalize_signatures(signatures, default_signatures(model, "__call__" if callable(model) else "predict"))
    for method in sigs:
        signature_target(model, method)  # fail at save time, not in the worker
    kind, serializer = pickler()

    def write(folder: Path) -> None:
        with open(folder / MODEL_FILE, "wb") as f:
            serializer.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)

    return store_model(
        name,
        write,
        framework=FRAMEWORK,
        framework_version=str(getattr(serializer, "__version__", f"protocol {pickle.HIGHEST_PROTOCOL}")),
        signatures=sigs,
        options={"format": kind, "file": MODEL_FILE, "trusted_only": True},
        **save,
    )


def load_model(tag: "str | Tag | Model", *, home: str | os.PathLike[str] | None = None) -> Any:
    """Load a stored object (pickle: only from a trusted store)."""
    stored = resolve(tag, FRAMEWORK, home)
    require_unpickler(stored.options.get("format"), f"model {stored}")
    with open(stored.path_of(str(stored.options.get("file", MODEL_FILE))), "rb") as f:
        return pickle.load(f)


class PicklableRunnable(ModelRunnable):
    """Hosts one stored Python object; methods come from its signatures."""

    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = False
    FRAMEWORK: ClassVar[str] = FRAMEWORK
    DEFAULT_METHOD: ClassVar[str | None] = "__call__"

    def setup(self, model: Model) -> None:
        self.model = load_model(model)

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return signature_target(self.model, method)(*args, **kwargs)


get, runnable_class, __getattr__ = adapter_functions(PicklableRunnable, "picklable model")
