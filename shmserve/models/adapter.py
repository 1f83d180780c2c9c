"""What the framework adapters share: the base Runnable that loads a stored
model inside the worker, and the per-model Runnable classes built from a
model's signatures.

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
from typing import Any, ClassVar, cast

from ..runnable import Runnable
from .store import Model, ModelStoreError, Tag, get, signature_batch_dim


class ModelRunnable(Runnable):
    """Base class of the adapters' Runnables: hosts one stored model.

    Subclasses set `FRAMEWORK`, load the model in `setup()` and call it in
    `invoke()`. Methods are added per model from its stored signatures.
    """

    FRAMEWORK: ClassVar[str] = ""
    #: The method ``runner.run(x)`` calls. An adapter's class names its usual
    #: signature (``"__call__"`` or ``"predict"``); each per-model class holds
    #: the one its stored signatures give (see `default_method`), or None.
    DEFAULT_METHOD: ClassVar[str | None] = "__call__"

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


def thread_count() -> int | None:
    """The thread budget the resource strategy gave this worker, if any."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


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


def default_method(preferred: str | None, signatures: dict[str, Any]) -> str | None:
    """The signature a runner calls by default: the adapter's `preferred` one, else
    ``__call__``, else the only one; None when a model has several and none of those."""
    for name in (preferred, "__call__"):
        if name is not None and name in signatures:
            return name
    return next(iter(signatures)) if len(signatures) == 1 else None


def default_signatures(model: Any, method: str) -> dict[str, Any]:
    """An adapter's signatures when a save names none: `method`, plus ``predict``
    where the model has its own (so ``runner.predict`` keeps working), not batchable."""
    signatures: dict[str, Any] = {method: {"batchable": False}}
    if callable(getattr(model, "predict", None)):
        signatures.setdefault("predict", {"batchable": False})
    return signatures


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


def signature_target(obj: Any, method: str, *, itself: tuple[str, ...] = ("__call__",)) -> Callable[..., Any]:
    """What a signature name calls on a loaded model (the rule BentoML follows).

    A name in `itself` calls the object (for a torch module ``__call__`` and
    ``forward``, so its hooks run); ``predict`` calls the object's own
    ``predict`` when it has one and the object itself otherwise; any other name
    calls the method of that name.
    """
    if method in itself or (method == "predict" and not callable(getattr(obj, "predict", None))):
        if not callable(obj):
            raise TypeError(f"{type(obj).__name__} object is not callable; name one of its methods in signatures")
        return cast("Callable[..., Any]", obj)
    fn = getattr(obj, method, None)
    if not callable(fn):
        raise AttributeError(f"{type(obj).__name__} has no method {method!r} named in signatures")
    return cast("Callable[..., Any]", fn)


def require(module: str, hint: str) -> Any:
    """Import an adapter's optional framework, or raise ImportError with `hint` (how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(hint) from exc


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
