"""The tensor kinds shmserve carries, and the limits of each place they cross.

Every "is this a torch / CUDA tensor?" of the transport, the HTTP side and
`shmserve.gpu` is asked here (the framework adapters in `shmserve.models`
work with their own framework's types directly)::

    kind         what it is                  crosses the transport as                 wire kind
    numpy        numpy.ndarray               its bytes in an arena + a TensorHeader   0
    torch        torch.Tensor on the CPU     its bytes (bfloat16 as int16, 'bf16')    1
    torch-cuda   torch.Tensor on a GPU       a CUDA IPC handle (`shmserve.gpu`)       none
    cupy         cupy.ndarray                a CUDA IPC handle (`shmserve.gpu`)       none

Detection never imports a framework: a value can be a torch tensor only if
torch is already in `sys.modules` (its class came from there), so checking
the loaded module is exact and costs a dict lookup.

Per kind: `to_wire` / `from_wire` (a host tensor as the numpy view that
crosses, and back as the kind the caller sent), `to_numpy` (for HTTP bodies),
and `join` / `split` along a dim (what batching does to several calls'
tensors). Device kinds join with their framework's own concatenate;
`shmserve.gpu.batch` has a gather kernel for them, measured by
``perf/gpu_bench.py``, which the serving path does not use: calls carrying
CUDA tensors are not batched (each has its own IPC handles).

Limits, named once (`TRANSPORT`, `HTTP`, `CUDA_IPC_DTYPES`), and why they differ:

* `TRANSPORT` (runner calls and results): numbers and bools, at most 8
  dimensions. A TensorHeader holds 8 shape slots and an 8-byte dtype string:
  every numeric dtype string fits (``'<c16'`` is the longest), a string
  dtype's need not (``'<U1234567'``), so strings cross as JSON values instead.
* `HTTP` (JSON, octet-stream and ``.npy`` bodies): numbers, bools and
  fixed-size strings (``S``/``U``, which a ``.npy`` file or a JSON array of
  strings may hold), up to numpy's own 32 dimensions; such an array reaches a
  runner only if it also fits `TRANSPORT` (else `InvalidInput` says why).
* `CUDA_IPC_DTYPES` (device tensors): named by the framework's dtype, not
  numpy's, because they travel by handle: includes bfloat16 and float8, which
  numpy cannot name.
Object and structured dtypes are refused everywhere: they would need pickle,
or have no layout a peer could read.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInput

__all__ = [
    "CUDA_IPC_DTYPES", "CUDA_IPC_NEEDS_VIEW", "CUPY", "HTTP", "KINDS", "KIND_NUMPY", "KIND_TORCH", "NUMPY",
    "TORCH", "TORCH_CUDA", "TRANSPORT", "TensorKind", "TensorLimits", "from_wire", "is_device", "is_tensor",
    "join", "kind_of", "numpy_dtype", "plan", "split", "to_list", "to_numpy", "to_wire",
]

KIND_NUMPY = 0  # TensorHeader kind codes (shmserve.shm.objects adds 2: raw buffers)
KIND_TORCH = 1


@dataclass(frozen=True)
class TensorKind:
    """One kind of tensor: its name, the framework module its type comes from, and how it crosses."""

    name: str
    module: str
    device: bool  # on a GPU: crosses as a CUDA IPC handle, not through an arena
    wire_kind: int | None  # the TensorHeader kind code of a host kind


NUMPY = TensorKind("numpy", "numpy", False, KIND_NUMPY)
TORCH = TensorKind("torch", "torch", False, KIND_TORCH)
TORCH_CUDA = TensorKind("torch-cuda", "torch", True, None)
CUPY = TensorKind("cupy", "cupy", True, None)
KINDS = (NUMPY, TORCH, TORCH_CUDA, CUPY)


@dataclass(frozen=True)
class TensorLimits:
    """What a tensor may be where it crosses one boundary (see the module docstring for why)."""

    where: str
    dtype_kinds: frozenset[str]  # numpy dtype kinds accepted
    max_ndim: int


TRANSPORT = TensorLimits("the shared-memory transport", frozenset("biufc"), 8)
HTTP = TensorLimits("HTTP bodies", frozenset("biufcSU"), 32)

# dtype name -> (typestr for __cuda_array_interface__, itemsize). Dtypes that
# the interface cannot name travel as same-width ints and are reinterpreted on
# arrival (a view, which costs nothing).
CUDA_IPC_DTYPES: dict[str, tuple[str, int]] = {
    "bool": ("|b1", 1),
    "uint8": ("|u1", 1),
    "int8": ("|i1", 1),
    "int16": ("<i2", 2),
    "uint16": ("<u2", 2),
    "int32": ("<i4", 4),
    "uint32": ("<u4", 4),
    "int64": ("<i8", 8),
    "uint64": ("<u8", 8),
    "float16": ("<f2", 2),
    "float32": ("<f4", 4),
    "float64": ("<f8", 8),
    "complex64": ("<c8", 8),
    "complex128": ("<c16", 16),
    # int16/int8 rather than uint: every torch version reads those from the interface.
    "bfloat16": ("<i2", 2),
    "float8_e4m3fn": ("|i1", 1),
    "float8_e5m2": ("|i1", 1),
}
CUDA_IPC_NEEDS_VIEW = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})


# -- detection ------------------------------------------------------------------


def kind_of(x: Any) -> TensorKind | None:
    """The kind of tensor `x` is, or None; never imports a framework."""
    if isinstance(x, np.ndarray):
        return NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        # Other devices (mps, meta) are host kinds here: `to_wire` refuses them by name.
        return TORCH_CUDA if x.device.type == "cuda" else TORCH
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return CUPY
    return None


def is_tensor(x: Any) -> bool:
    """Whether `x` is a tensor of any kind."""
    return kind_of(x) is not None


def is_device(x: Any) -> bool:
    """Whether `x` is a GPU tensor: a torch CUDA tensor or a CuPy array."""
    kind = kind_of(x)
    return kind is not None and kind.device


# -- to and from the wire -----------------------------------------------------------


def to_wire(x: Any, where: str) -> tuple[np.ndarray, int, str]:
    """A host tensor as (numpy array sharing its memory where possible, wire kind, dtype string).

    Raises `InvalidInput`, naming `where`, for a tensor outside `TRANSPORT`.
    """
    if isinstance(x, np.ndarray):
        arr, kind = x, KIND_NUMPY
        dtype_str = _DTYPE_STRS.get(arr.dtype) or _dtype_str(arr.dtype, where)  # a known dtype: no frame
    else:  # a torch tensor (device kinds are routed to shmserve.gpu before this)
        t = x.detach()
        if t.device.type != "cpu":
            raise InvalidInput(f"{where}: only CPU and CUDA tensors can cross the transport, got a {t.device.type} tensor")
        kind = KIND_TORCH
        if str(t.dtype) == "torch.bfloat16":
            import torch

            arr, dtype_str = t.view(torch.int16).numpy(), "bf16"
        else:
            arr = t.numpy()
            dtype_str = _dtype_str(arr.dtype, where)
    if arr.ndim > TRANSPORT.max_ndim:
        raise InvalidInput(f"{where}: tensors of up to {TRANSPORT.max_ndim} dimensions are supported, got {arr.ndim}")
    return arr, kind, dtype_str


def from_wire(arr: np.ndarray, kind: int, dtype_str: str) -> Any:
    """The numpy view `arr` as the kind of tensor the caller sent (no copy)."""
    if kind == KIND_TORCH:
        import torch

        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if dtype_str == "bf16" else t
    return arr


_DTYPE_STRS: dict[np.dtype, str] = {}


def _dtype_str(dtype: np.dtype, where: str) -> str:
    known = _DTYPE_STRS.get(dtype)
    if known is not None:
        return known
    if dtype.kind not in TRANSPORT.dtype_kinds or dtype.fields is not None:
        raise InvalidInput(
            f"{where}: dtype {dtype} cannot cross the transport; use a numeric or bool dtype "
            "(object, string, datetime and structured arrays are refused)"
        )
    text = dtype.newbyteorder("<").str if dtype.byteorder == ">" else dtype.str
    if len(_DTYPE_STRS) < 256:
        _DTYPE_STRS[dtype] = text
    return text


_DTYPES: dict[str, np.dtype] = {}


def numpy_dtype(dtype_str: str) -> np.dtype:
    """The numpy dtype of a wire dtype string (cached: this is on the hot path)."""
    dt = _DTYPES.get(dtype_str)
    if dt is None:
        dt = np.dtype(np.int16) if dtype_str == "bf16" else np.dtype(dtype_str)
        if len(_DTYPES) < 256:
            _DTYPES[dtype_str] = dt
    return dt


# -- for HTTP bodies ----------------------------------------------------------------


def to_numpy(x: Any) -> np.ndarray:
    """`x` as a numpy array: a host copy of a device tensor, anything else through `np.asarray`."""
    kind = kind_of(x)
    if kind is NUMPY:
        return x  # type: ignore[no-any-return]
    if kind is CUPY:
        return x.get()  # type: ignore[no-any-return]
    if kind is not None:
        return x.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(x)


def to_list(x: Any) -> Any:
    """A tensor of any kind as nested lists (for JSON); TypeError for anything else."""
    kind = kind_of(x)
    if kind is NUMPY:
        return x.tolist()
    if kind is CUPY:
        return x.get().tolist()
    if kind is not None:
        return x.detach().cpu().tolist()
    raise TypeError(f"object of type {type(x).__name__} is not a tensor")


# -- join and split along a dim ---------------------------------------------------------


def plan(shapes: Sequence[Sequence[int]], dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sizes along `dim`, joined shape) for tensors of `shapes`; every other dim must agree."""
    if not shapes:
        raise ValueError("cannot batch zero tensors")
    ndim = len(shapes[0])
    if not -ndim <= dim < ndim:
        raise ValueError(f"batch dim {dim} is out of range for {ndim}-d inputs")
    dim %= ndim
    rest = [tuple(s[:dim]) + tuple(s[dim + 1:]) for s in shapes]
    for i, (s, r) in enumerate(zip(shapes, rest, strict=True)):
        if len(s) != ndim or r != rest[0]:
            raise ValueError(
                f"input {i} has shape {tuple(s)} but input 0 has {tuple(shapes[0])}; "
                f"batched inputs may differ only along dim {dim}"
            )
    sizes = tuple(int(s[dim]) for s in shapes)
    out = list(shapes[0])
    out[dim] = sum(sizes)
    return sizes, tuple(out)


def join(parts: Sequence[Any], dim: int = 0) -> Any:
    """One tensor holding `parts` (one kind, dtype and device; shapes may differ only along `dim`).

    A single part is returned as is. Joining copies: the worker avoids it where
    the parts already lie back to back in one arena.
    """
    found = [(kind_of(p), p) for p in parts]
    kinds = {k for k, _ in found}
    if len(kinds) != 1 or None in kinds:
        names = sorted({k.name if k is not None else type(p).__name__ for k, p in found})
        raise TypeError(f"cannot join {names}; a batch holds tensors of one kind")
    dtypes = {str(p.dtype) for p in parts}
    if len(dtypes) > 1:
        raise ValueError(f"cannot join tensors of dtypes {sorted(dtypes)}; a batch holds one dtype")
    plan([tuple(p.shape) for p in parts], dim)
    if len(parts) == 1:
        return parts[0]
    kind = kinds.pop()
    if kind is NUMPY:
        return np.concatenate(parts, axis=dim)
    if kind is CUPY:
        return sys.modules["cupy"].concatenate(list(parts), axis=dim)
    return sys.modules["torch"].cat(list(parts), dim)


def split(output: Any, sizes: Sequence[int], dim: int = 0, what: str = "the batch output") -> list[Any]:
    """Views of `output` along `dim`, `sizes[i]` items each (no copy), for any kind."""
    shape = tuple(output.shape)
    total = shape[dim] if -len(shape) <= dim < len(shape) else None
    if total != sum(sizes):
        raise ValueError(
            f"{what} has shape {shape}, but the batch joined {sum(sizes)} items ({list(sizes)}) along dim {dim}; "
            "a batchable method must return one output item per input item, along its batch_dim"
        )
    views, start = [], 0
    lead = (slice(None),) * (dim % len(shape))
    for n in sizes:
        views.append(output[lead + (slice(start, start + n),)])
        start += n
    return views
