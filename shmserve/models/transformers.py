"""Hugging Face transformers adapter: ``shmserve.transformers.save_model / load_model / get``.

A ``transformers`` pipeline is stored with ``save_pretrained`` in the model's
``pipeline/`` folder (config, tokenizer and weights; the weights are
safetensors, which run no code when loaded) and its task recorded, so loading
rebuilds it with ``transformers.pipeline(task, model=folder)`` from local
files only: nothing is downloaded.

Signature names: ``__call__`` calls the pipeline itself (the default, not
batchable); other names call the pipeline's method of that name.

Batching: a call with a list of inputs (``runner.run(["text a", "text b"])``)
runs as one pipeline batch (``batch_size`` = the list's length, unless the
call gives one). When the signature is batchable (``signatures={"__call__":
{"batchable": True}}``), concurrent calls with lists of strings join one batch
along dim 0, as in BentoML: the caller's process packs each list into byte
arrays (`shmserve.models.texts`), the worker joins them like any tensors and
the pipeline gets one list; each caller gets the results of its own strings.
A single string (not a list), or other inputs, run on their own.

The runner uses the GPU its worker was given (``device=0``) when torch sees
one, and takes torch's thread count from ``OMP_NUM_THREADS`` (set by the
resource strategy).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import texts
from .adapter import CPU_AND_GPU, ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, save_signatures, signature_target, use_torch_threads
from .store import Model, SaveArgs, Tag

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "transformers"
PIPELINE_DIR = "pipeline"
_PACKED = "_shmserve_packed_texts"  # the keyword that marks a call whose first argument `prepare_call` packed
_HINT = "shmserve.transformers needs transformers and torch: pip install 'shmserve[transformers]' torch"


def _transformers() -> Any:
    require("torch", _HINT)
    return require("transformers", _HINT)


def save_model(name: str, pipeline: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save a ``transformers.Pipeline`` as a new version of `name`.

    Without `signatures`: ``__call__``, plus ``predict`` (every pipeline has
    one). `save` takes `labels`, `metadata`, `custom_objects` and `home` (see
    `SaveArgs`).
    """
    transformers = _transformers()
    if not isinstance(pipeline, transformers.Pipeline):
        raise TypeError(
            f"shmserve.transformers.save_model needs a transformers.Pipeline (transformers.pipeline(task, model=...)), "
            f"got {type(pipeline).__name__}"
        )
    task = getattr(pipeline, "task", None)
    if not task:
        raise ValueError("the pipeline has no task; build it with transformers.pipeline(task, model=..., tokenizer=...)")
    sigs = save_signatures(pipeline, signatures, "__call__", answered=("__call__",))

    def write(model_folder: Path) -> None:
        folder = model_folder / PIPELINE_DIR
        pipeline.save_pretrained(str(folder))
        if not any(folder.glob("*.safetensors")):
            # Weights written as a torch pickle (pytorch_model.bin) would run code when loaded.
            raise ValueError(
                f"the pipeline's model was not saved as safetensors (files: {sorted(p.name for p in folder.iterdir())}); "
                "install safetensors so it can be stored without pickle"
            )

    return store_model(
        name,
        write,
        framework=FRAMEWORK,
        framework_version=str(transformers.__version__),
        signatures=sigs,
        options={"format": "save_pretrained", "dir": PIPELINE_DIR, "task": str(task), "trusted_only": False},
        **save,
    )


def load_model(
    tag: "str | Tag | Model",
    *,
    device: Any = None,
    home: str | os.PathLike[str] | None = None,
    **pipeline_kwargs: Any,
) -> Any:
    """The stored pipeline, rebuilt from its local files (`device`: e.g. ``"cpu"``, ``0``)."""
    transformers = _transformers()
    stored = resolve(tag, FRAMEWORK, home)
    options = stored.options
    folder: Path = stored.path_of(str(options.get("dir", PIPELINE_DIR)))
    return transformers.pipeline(str(options["task"]), model=str(folder), device=device, **pipeline_kwargs)


class TransformersRunnable(ModelRunnable):
    """Hosts one stored transformers pipeline; methods come from its signatures."""

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = CPU_AND_GPU
    FRAMEWORK: ClassVar[str] = FRAMEWORK
    DEFAULT_METHOD: ClassVar[str | None] = "__call__"

    def setup(self, model: Model) -> None:
        torch = require("torch", _HINT)
        use_torch_threads(torch)
        self.pipeline = load_model(model, device=0 if torch.cuda.is_available() else "cpu")

    @classmethod
    def prepare_call(cls, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A list of strings for a batchable signature crosses packed, so that calls join (see above)."""
        sig = cls.methods.get(method)
        if sig is None or not sig.batchable or sig.input_dim != 0 or not args or not texts.is_texts(args[0]):
            return args, kwargs
        return (*texts.pack(args[0]), *args[1:]), {**kwargs, _PACKED: True}

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get(_PACKED):
            kwargs = {k: v for k, v in kwargs.items() if k != _PACKED}
            args = (texts.unpack(args[0], args[1]), *args[2:])
        if method == "__call__" and args and isinstance(args[0], list) and args[0]:
            kwargs = {"batch_size": len(args[0]), **kwargs}  # one forward pass for the whole list
        return signature_target(self.pipeline, method)(*args, **kwargs)


get, runnable_class, __getattr__ = adapter_functions(TransformersRunnable, "transformers pipeline")
