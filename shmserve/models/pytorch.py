"""PyTorch adapter: ``shmserve.pytorch.save_model / load_model / get``.

Formats (recorded in the manifest as ``options.format``):

* ``"pickle"`` (any ``torch.nn.Module``): the whole module pickled with
  ``torch.save``. Loading it runs ``torch.load(weights_only=False)``, which can
  execute code: load such models only from a store you trust. Module classes
  are pickled by reference (keep them importable where the model is loaded),
  except classes defined in ``__main__``, which are saved by value with
  cloudpickle when it is installed. The state dict is saved
  beside it as ``weights.pt``; ``load_model(tag, module=MyNet())`` loads only
  that, with ``weights_only=True``, into a module you construct yourself.
* ``"torchscript"`` (a ``torch.jit.ScriptModule``): ``torch.jit.save``; no
  Python pickle is loaded. TorchScript is deprecated upstream.
* ``"export"`` (a ``torch.export.ExportedProgram``): ``torch.export.save``;
  no Python pickle is loaded. The runner calls ``program.module()``.

The runner uses the GPU when CUDA is available to its worker (the resource
strategy gives each GPU worker one device and hides GPUs from CPU workers),
runs every call under ``torch.inference_mode()`` with the module in eval mode,
takes its thread count from ``OMP_NUM_THREADS`` (set by the strategy), accepts
numpy arrays or torch tensors, and returns torch tensors when given torch
tensors, numpy arrays otherwise.

Signature names: ``__call__`` and ``forward`` call the module itself (its
``forward``, with hooks); ``predict`` calls the module's own ``predict`` when it
has one and the module itself otherwise; any other name calls the method of
that name. TorchScript and exported programs serve only their forward.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import CPU_AND_GPU, ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import check_methods, default_signatures, require, signature_target, use_torch_threads
from .store import Model, SaveArgs, Tag, normalize_signatures

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "pytorch"
_CALL_NAMES = ("predict", "__call__", "forward")  # what a module without such methods still answers
_ITSELF = ("__call__", "forward")
_FILES = {"pickle": "model.pt", "torchscript": "model.ts", "export": "model.pt2"}
WEIGHTS_FILE = "weights.pt"


def _torch() -> Any:
    return require("torch", "shmserve.pytorch needs PyTorch: pip install torch")


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save a ``torch.nn.Module``, ScriptModule or ExportedProgram as a new version of `name`.

    `signatures` maps method names to ``{"batchable": bool, "batch_dim": int}``;
    the default is ``__call__`` (the runner's default method), plus ``predict``
    when the module has its own, neither batchable. `save` takes `labels`,
    `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    torch = _torch()
    sigs = normalize_signatures(signatures, default_signatures(model, "__call__"))
    if isinstance(model, torch.export.ExportedProgram):
        fmt = "export"
    elif isinstance(model, torch.jit.ScriptModule):
        fmt = "torchscript"
    elif isinstance(model, torch.nn.Module):
        fmt = "pickle"
    else:
        raise TypeError(
            f"shmserve.pytorch.save_model needs a torch.nn.Module, ScriptModule or ExportedProgram, "
            f"got {type(model).__name__}; for other callables use shmserve.picklable.save_model"
        )
    if fmt != "pickle":
        extra = sorted(m for m in sigs if m not in _CALL_NAMES)
        if extra:
            raise ValueError(f"a {fmt} model can only serve its forward (signature 'predict' or '__call__'), not {extra}")
    else:
        check_methods(model, sigs, answered=_CALL_NAMES)
    options: dict[str, Any] = {"format": fmt, "file": _FILES[fmt], "trusted_only": fmt == "pickle"}
    pickler: Any = None
    if fmt == "pickle":
        options["weights"] = WEIGHTS_FILE
        pickler = _pickler_for(model, options)

    def write(folder: Path) -> None:
        path = folder / _FILES[fmt]
        if fmt == "export":
            torch.export.save(model, str(path))
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.save(model, str(path))
        else:
            torch.save(model, path, pickle_module=pickler)
            torch.save(model.state_dict(), folder / WEIGHTS_FILE)

    return store_model(
        name, write, framework=FRAMEWORK, framework_version=str(torch.__version__), signatures=sigs, options=options, **save
    )


def _pickler_for(model: Any, options: dict[str, Any]) -> Any:
    """pickle, or cloudpickle when a module class lives in ``__main__`` (a script or
    notebook), which plain pickle can only save by a name other processes lack."""
    import pickle

    if any(type(m).__module__ == "__main__" for m in model.modules()):
        try:
            import cloudpickle
        except ImportError:
            warnings.warn(
                f"{type(model).__name__} is defined in __main__: only processes that run this same script "
                "can load it. Move the class into a module, or pip install cloudpickle to save it by value.",
                stacklevel=3,
            )
        else:
            options["serializer"] = "cloudpickle"
            return cloudpickle
    options["serializer"] = "pickle"
    return pickle


def load_model(
    tag: "str | Tag | Model",
    *,
    module: Any = None,
    device: Any = "cpu",
    home: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a stored PyTorch model onto `device`.

    With `module` (an instance of the saved module's class) only the state
    dict is read, with ``torch.load(weights_only=True)``, and `module` is
    returned. Otherwise the saved format decides; ``"pickle"`` models load
    with ``weights_only=False`` and must come from a trusted store.
    """
    torch = _torch()
    stored = resolve(tag, FRAMEWORK, home)
    options = stored.options
    fmt = options.get("format")
    if module is not None:
        weights = options.get("weights")
        if weights is None:
            raise ValueError(f"model {stored} ({fmt} format) has no separate state dict; call load_model without module=")
        state = torch.load(stored.path_of(weights), map_location=device, weights_only=True)
        module.load_state_dict(state)
        return module.to(device)
    path = stored.path_of(str(options.get("file", _FILES.get(str(fmt), ""))))
    if fmt == "export":
        return torch.export.load(str(path))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device)
    if fmt == "pickle":
        return torch.load(path, map_location=device, weights_only=False)
    raise ValueError(f"model {stored}: unknown pytorch format {fmt!r} in its manifest; re-save it with this shmserve")


class PyTorchRunnable(ModelRunnable):
    """Hosts one stored PyTorch model; methods come from its signatures."""

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = CPU_AND_GPU
    FRAMEWORK: ClassVar[str] = FRAMEWORK
    DEFAULT_METHOD: ClassVar[str | None] = "__call__"

    def setup(self, model: Model) -> None:
        torch = _torch()
        self.torch = torch
        use_torch_threads(torch)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_model(model, device=self.device)
        if model.options.get("format") == "export":
            loaded = loaded.module().to(self.device)
        else:
            loaded.eval()
        self.model = loaded

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch = self.torch
        fn = signature_target(self.model, method, itself=_ITSELF)
        state: dict[str, Any] = {"torch": False, "device": None}
        args = tuple(self._to_device(a, state) for a in args)
        kwargs = {k: self._to_device(v, state) for k, v in kwargs.items()}
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        return self._from_device(out, state)

    def _to_device(self, value: Any, state: dict[str, Any]) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            state["torch"] = True
            if state["device"] is None:
                state["device"] = value.device
            return value.to(self.device)
        np = _numpy()
        if isinstance(value, np.ndarray):
            if not value.flags.writeable:
                # Batches read from shared memory are read-only views; the model
                # runs under inference_mode and never writes its inputs.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    tensor = torch.from_numpy(value)
            else:
                tensor = torch.from_numpy(value)
            return tensor.to(self.device)
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_device(v, state) for v in value)
        if isinstance(value, dict):
            return {k: self._to_device(v, state) for k, v in value.items()}
        return value

    def _from_device(self, value: Any, state: dict[str, Any]) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            if state["torch"]:
                return value.to(state["device"] or "cpu")
            return value.detach().cpu().numpy()
        if isinstance(value, (list, tuple)):
            return type(value)(self._from_device(v, state) for v in value)
        if isinstance(value, dict):
            return {k: self._from_device(v, state) for k, v in value.items()}
        return value


def _numpy() -> Any:
    import numpy

    return numpy


get, runnable_class, __getattr__ = adapter_functions(PyTorchRunnable, "PyTorch model")
