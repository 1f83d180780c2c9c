"""What the framework adapters share: saving through the store
(`store_model`), the base Runnable that loads a stored model inside the
worker, and the per-model Runnable classes built from a model's signatures
(their ``DEFAULT_METHOD`` is the signature ``runner.run`` calls). Importing
frameworks, thread budgets and the signature rules are in `frameworks`.

A runner's Runnable class travels to spawned workers by reference (module and
qualified name), so the class made for one model must be importable there.
Each per-model class is named after its tag and store, e.g.
``shmserve.models.pytorch._PyTorchRunnable__<hex>``, and each adapter module
answers such names with a module ``__getattr__`` that rebuilds the class from
the store's manifest. The model itself is loaded in the worker, from
``runnable_init_params = {"tag": "name:version", "home": store}``.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..runnable import Runnable
from .frameworks import default_method
from .store import Model, ModelStoreError, SaveArgs, Tag, create, get, signature_batch_dim

if TYPE_CHECKING:
    from typing_extensions import Unpack


#: ``SUPPORTED_RESOURCES`` of an adapter whose framework can use the GPU its worker is given.
CPU_AND_GPU = ("cpu", "nvidia.com/gpu")


class ModelRunnable(Runnable):
    """Base class of the adapters' Runnables: hosts one stored model.

    Subclasses set `FRAMEWORK`, load the model in `setup()` and call it in
    `invoke()`. Methods are added per model from its stored signatures.
    """

    FRAMEWORK: ClassVar[str] = ""
    #: The method ``runner.run(x)`` calls. An adapter's class names its usual
    #: signature (``"predict"`` unless it says otherwise); each per-model class
    #: holds the one its stored signatures give (see `default_method`), or None.
    DEFAULT_METHOD: ClassVar[str | None] = "predict"
    # Framework runtimes use their own thread pools, sized from the strategy's budget.
    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = True

    def __init__(self, tag: str, home: str | None = None) -> None:
        self.stored = get(tag, home=home)
        check_framework(self.stored, self.FRAMEWORK)
        self.setup(self.stored)

    def setup(self, model: Model) -> None:
        """Load the model (runs once per worker)."""
        raise NotImplementedError

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call one signature method of the loaded model."""
        raise NotImplementedError


def store_model(
    name: str,
    write: Callable[[Path], object],
    *,
    framework: str,
    framework_version: str,
    signatures: dict[str, dict[str, Any]],
    options: dict[str, Any],
    **save: Unpack[SaveArgs],
) -> Model:
    """Save one model version: `write(folder)` writes the framework's files (its result is ignored) into
    a private folder, which is published atomically once it returns (see `store.create`)."""
    with create(
        name, framework=framework, framework_version=framework_version, signatures=signatures, options=options, **save
    ) as draft:
        write(draft.path)
    assert draft.model is not None
    return draft.model


def check_framework(model: Model, framework: str) -> None:
    """Refuse a model saved by another adapter, naming the right one."""
    if model.framework != framework:
        raise ModelStoreError(
            f"model {model} was saved with the {model.framework!r} adapter, not {framework!r}; "
            f"use shmserve.{model.framework}.load_model / .get instead"
        )


def resolve(tag: "str | Tag | Model", framework: str, home: str | os.PathLike[str] | None = None) -> Model:
    """A stored model of `framework` from a tag or Model."""
    model = tag if isinstance(tag, Model) else get(tag, home=home)
    check_framework(model, framework)
    return model



def _class_name(base: type[ModelRunnable], tag: str, home: str) -> str:
    return f"_{base.__name__}__{json.dumps([tag, home]).encode().hex()}"


def runnable_class_for(base: type[ModelRunnable], model: Model) -> type[ModelRunnable]:
    """The Runnable class serving `model`, with one method per signature."""
    return _build(base.__module__, base.__qualname__, f"{model.name}:{model.version}", str(model.home))


def _build(module_name: str, base_name: str, tag: str, home: str) -> type[ModelRunnable]:
    # One class object per (adapter, tag, store) for the life of the process, so
    # that pickling by name finds the very class the Runner holds; the lock keeps
    # two threads from building rival copies.
    with _BUILD_LOCK:
        return _build_cached(module_name, base_name, tag, home)


_BUILD_LOCK = threading.Lock()


@functools.cache
def _build_cached(module_name: str, base_name: str, tag: str, home: str) -> type[ModelRunnable]:
    base = getattr(importlib.import_module(module_name), base_name)
    model = get(tag, home=home)
    check_framework(model, base.FRAMEWORK)
    qualname = _class_name(base, tag, home)
    cls: type[ModelRunnable] = type(
        qualname, (base,), {"__module__": module_name, "__qualname__": qualname, "__doc__": base.__doc__}
    )
    cls.__name__ = base.__name__
    cls.DEFAULT_METHOD = default_method(base.DEFAULT_METHOD, model.signatures)
    for method, options in model.signatures.items():
        cls.add_method(
            _method(method),
            method,
            batchable=bool(options.get("batchable", False)),
            batch_dim=signature_batch_dim(options),
        )
    return cls







def _method(name: str) -> Any:
    def method(self: ModelRunnable, *args: Any, **kwargs: Any) -> Any:
        return self.invoke(name, args, kwargs)

    method.__name__ = name
    method.__doc__ = f"Call the stored model's {name!r} signature."
    return method


def class_from_name(base: type[ModelRunnable], attr: str) -> type[ModelRunnable]:
    """Rebuild a per-model class from its name (an adapter module's ``__getattr__``)."""
    prefix = f"_{base.__name__}__"
    if not attr.startswith(prefix):
        raise AttributeError(f"module {base.__module__!r} has no attribute {attr!r}")
    try:
        tag, home = json.loads(bytes.fromhex(attr[len(prefix):]))
    except ValueError:
        raise AttributeError(f"module {base.__module__!r} has no attribute {attr!r}") from None
    return _build(base.__module__, base.__qualname__, str(tag), str(home))




def adapter_functions(
    base: type[ModelRunnable], what: str
) -> tuple[Callable[..., Model], Callable[[Model], type[ModelRunnable]], Callable[[str], type[ModelRunnable]]]:
    """``get``, ``runnable_class`` and the module ``__getattr__`` of the adapter whose Runnable is `base`.

    Every adapter module exports these three, and they differ only in `base`::

        get, runnable_class, __getattr__ = adapter_functions(SklearnRunnable, "scikit-learn model")
    """

    def get_model(tag: "str | Tag", *, home: str | os.PathLike[str] | None = None) -> Model:
        return resolve(get(tag, home=home), base.FRAMEWORK)

    def runnable_class(model: Model) -> type[ModelRunnable]:
        return runnable_class_for(base, model)

    def module_getattr(attr: str) -> type[ModelRunnable]:
        # Spawned workers find per-model Runnable classes by name through here.
        return class_from_name(base, attr)

    get_model.__doc__ = f"The stored {what} for `tag`; call ``.to_runner()`` on it to serve it."
    runnable_class.__doc__ = "The Runnable class serving `model` (used by ``Model.to_runner``)."
    for fn, name in ((get_model, "get"), (runnable_class, "runnable_class"), (module_getattr, "__getattr__")):
        fn.__module__, fn.__name__, fn.__qualname__ = base.__module__, name, name
    return get_model, runnable_class, module_getattr
