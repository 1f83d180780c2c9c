"""ONNX adapter: ``shmserve.onnx.save_model / load_model / get``, served with onnxruntime.

Models are stored as ``model.onnx`` (protobuf: no code runs when it is
loaded). The one signature is ``run``: positional arguments feed the graph's
inputs in order (keyword arguments by input name); numpy arrays whose dtype
differs from the input's declared element type are cast. A graph with one
output returns an array, otherwise a list in output order.

The runner uses ``CUDAExecutionProvider`` when onnxruntime offers it and the
worker was given a GPU, and sets ``intra_op_num_threads`` from
``OMP_NUM_THREADS`` (set by the resource strategy).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import CPU_AND_GPU, ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, thread_count
from .store import Model, SaveArgs, Tag, normalize_signatures

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "onnx"
DEFAULT_SIGNATURES: dict[str, Any] = {"run": {"batchable": False}}
MODEL_FILE = "model.onnx"

# onnxruntime input type strings -> numpy dtype names
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _onnx() -> Any:
    return require("onnx", "shmserve.onnx needs onnx: pip install onnx onnxruntime")


def _ort() -> Any:
    return require("onnxruntime", "serving ONNX models needs onnxruntime: pip install onnxruntime")


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save an ONNX model (``onnx.ModelProto``, serialized bytes, or a path to a
    ``.onnx`` file) as a new version of `name`. Only the ``run`` signature exists.

    `save` takes `labels`, `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    onnx = _onnx()
    sigs = normalize_signatures(signatures, DEFAULT_SIGNATURES)
    if set(sigs) != {"run"}:
        raise ValueError(f"ONNX models have one signature, 'run'; got {sorted(sigs)}")
    if isinstance(model, (str, os.PathLike)):
        data = Path(model).read_bytes()
    elif isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    elif isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    else:
        raise TypeError(f"shmserve.onnx.save_model needs an onnx.ModelProto, bytes or a file path, got {type(model).__name__}")
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    opset = [{"domain": o.domain, "version": int(o.version)} for o in proto.opset_import]
    return store_model(
        name,
        lambda folder: (folder / MODEL_FILE).write_bytes(data),
        framework=FRAMEWORK,
        framework_version=str(onnx.__version__),
        signatures=sigs,
        options={"format": "onnx", "file": MODEL_FILE, "trusted_only": False, "opset": opset},
        **save,
    )


def load_model(tag: "str | Tag | Model", *, home: str | os.PathLike[str] | None = None) -> Any:
    """The stored graph as an ``onnx.ModelProto``."""
    onnx = _onnx()
    stored = resolve(tag, FRAMEWORK, home)
    return onnx.load(str(stored.path_of(str(stored.options.get("file", MODEL_FILE)))))


def load_session(
    tag: "str | Tag | Model",
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over the stored model."""
    ort = _ort()
    stored = resolve(tag, FRAMEWORK, home)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if providers is None:
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
            providers.insert(0, "CUDAExecutionProvider")
    path = stored.path_of(str(stored.options.get("file", MODEL_FILE)))
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxRunnable(ModelRunnable):
    """Hosts one stored ONNX model in an onnxruntime session."""

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = CPU_AND_GPU
    FRAMEWORK: ClassVar[str] = FRAMEWORK
    DEFAULT_METHOD: ClassVar[str | None] = "run"

    def setup(self, model: Model) -> None:
        import numpy as np

        self.np = np
        self.session = load_session(model, threads=thread_count())
        self.inputs = [(i.name, _ORT_TYPES.get(i.type)) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        np = self.np
        if len(args) > len(self.inputs):
            raise TypeError(f"the ONNX graph takes {len(self.inputs)} inputs, got {len(args)} positional arguments")
        feed: dict[str, Any] = {}
        for (name, dtype), value in zip(self.inputs, args, strict=False):
            feed[name] = self._cast(np, value, dtype)
        types = dict(self.inputs)
        for name, value in kwargs.items():
            if name not in types:
                raise TypeError(f"the ONNX graph has no input {name!r}; its inputs are {[n for n, _ in self.inputs]}")
            feed[name] = self._cast(np, value, types[name])
        missing = [n for n, _ in self.inputs if n not in feed]
        if missing:
            raise TypeError(f"missing ONNX graph inputs {missing}")
        outputs = self.session.run(self.output_names, feed)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    @staticmethod
    def _cast(np: Any, value: Any, dtype: str | None) -> Any:
        arr = np.asarray(value)
        if dtype is not None and arr.dtype != np.dtype(dtype):
            arr = arr.astype(dtype)
        return arr


get, runnable_class, __getattr__ = adapter_functions(OnnxRunnable, "ONNX model")
