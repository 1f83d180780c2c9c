"""torch and CuPy device tensors, seen through one small adapter.

Neither framework is imported here unless the caller's value already came from
it (its module is in `sys.modules`) or the caller asked for that kind by name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..tensors import CUDA_IPC_DTYPES, CUDA_IPC_NEEDS_VIEW, CUPY, TORCH_CUDA, kind_of
from .driver import GpuUnavailable

KINDS = ("torch", "cupy")

# The dtypes a device tensor may have (named by its framework; why they differ from the
# transport's and HTTP's: `shmserve.tensors`).
DTYPES = CUDA_IPC_DTYPES
NEEDS_VIEW = CUDA_IPC_NEEDS_VIEW


@dataclass(frozen=True)
class DeviceTensorInfo:
    """What the hand-off needs to know about a device tensor."""

    kind: str
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements, as torch reports them
    dtype: str
    itemsize: int
    device: int


def tensor_kind(x: Any) -> str | None:
    """'torch' for a torch CUDA tensor, 'cupy' for a CuPy array, else None.

    Checks only frameworks already imported: a value cannot be a torch tensor
    unless torch is in `sys.modules`.
    """
    kind = kind_of(x)
    return "torch" if kind is TORCH_CUDA else "cupy" if kind is CUPY else None


def require(kind: str) -> Any:
    """Import framework `kind` or raise GpuUnavailable saying how to get it."""
    if kind not in KINDS:
        raise ValueError(f"unknown device tensor kind {kind!r}; expected one of {KINDS}")
    try:
        module = importlib.import_module(kind)
    except ImportError as exc:
        extra = "pip install 'shmserve[cupy]' (cupy-cuda12x)" if kind == "cupy" else "pip install a CUDA build of torch"
        raise GpuUnavailable(f"{kind} is not installed ({exc}); {extra}") from exc
    if kind == "torch" and not module.cuda.is_available():
        build = "a CPU-only build" if module.version.cuda is None else f"built for CUDA {module.version.cuda}"
        raise GpuUnavailable(
            f"torch {module.__version__} cannot use CUDA here ({build}, "
            f"{'no device visible' if module.version.cuda else 'reinstall a CUDA wheel'})"
        )
    return module


def describe(x: Any) -> DeviceTensorInfo:
    """Pointer, shape, strides, dtype and device of a torch CUDA tensor or CuPy array."""
    kind = tensor_kind(x)
    if kind == "torch":
        dtype = str(x.dtype).removeprefix("torch.")
        _check_dtype(dtype)
        return DeviceTensorInfo(
            "torch", int(x.data_ptr()), tuple(x.shape), tuple(x.stride()), dtype, x.element_size(), int(x.device.index)
        )
    if kind == "cupy":
        dtype = x.dtype.name
        _check_dtype(dtype)
        itemsize = int(x.itemsize)
        if any(s % itemsize for s in x.strides):
            raise ValueError(f"CuPy array strides {x.strides} are not multiples of its itemsize {itemsize}")
        return DeviceTensorInfo(
            "cupy", int(x.data.ptr), tuple(x.shape), tuple(s // itemsize for s in x.strides), dtype, itemsize, int(x.device.id)
        )
    raise TypeError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype} cannot cross processes as a CUDA IPC handle; supported: {sorted(DTYPES)}")


def current_stream(kind: str, device: int) -> int:
    """The raw CUstream that `kind` is currently issuing work to on `device`."""
    mod = require(kind)
    if kind == "torch":
        return int(mod.cuda.current_stream(device).cuda_stream)
    with mod.cuda.Device(device):
        return int(mod.cuda.get_current_stream().ptr)


class _CudaArray:
    """Exposes raw device memory through `__cuda_array_interface__` (v3).

    `owner` is kept alive for as long as any tensor built on this object lives:
    torch and CuPy both hold a reference to the exporter.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], typestr: str, itemsize: int, owner: Any) -> None:
        self.owner = owner
        self.__cuda_array_interface__ = {
            "version": 3,
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (int(ptr), False),
            "strides": tuple(s * itemsize for s in strides),
            # None: no producer stream to sync with; ordering is done with the IPC event.
            "stream": None,
        }


def from_pointer(
    kind: str, ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: str, device: int, owner: Any
) -> Any:
    """A `kind` tensor viewing device memory at `ptr` (no copy); `owner` keeps it mapped."""
    typestr, itemsize = DTYPES[dtype]
    mod = require(kind)
    holder = _CudaArray(ptr, shape, strides, typestr, itemsize, owner)
    if kind == "torch":
        # Older torch builds the tensor on the *current* device rather than the
        # pointer's: make that the right one.
        with mod.cuda.device(device):
            t = mod.as_tensor(holder, device=f"cuda:{device}")
        return t.view(getattr(mod, dtype)) if dtype in NEEDS_VIEW else t
    if dtype in NEEDS_VIEW:
        raise ValueError(f"CuPy has no {dtype} dtype; receive it as a torch tensor instead")
    extent = span_bytes(shape, strides, itemsize)
    mem = mod.cuda.UnownedMemory(ptr, max(extent, 1), holder, device)
    return mod.ndarray(shape, dtype=dtype, memptr=mod.cuda.MemoryPointer(mem, 0), strides=tuple(s * itemsize for s in strides))


def empty(kind: str, shape: tuple[int, ...], dtype: str, device: int) -> Any:
    """A new contiguous `kind` tensor on `device` (used as a copy destination)."""
    mod = require(kind)
    if kind == "torch":
        return mod.empty(shape, dtype=getattr(mod, dtype), device=f"cuda:{device}")
    with mod.cuda.Device(device):
        return mod.empty(shape, dtype=dtype)


def span_bytes(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> int:
    """Bytes from the lowest to one past the highest element a strided view touches."""
    lo, hi = byte_extent(shape, strides, itemsize)
    return hi - lo


def byte_extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """(lo, hi) byte offsets, relative to the first element, that a view touches.

    Negative strides (CuPy allows them) make `lo` negative. An empty view
    touches nothing: (0, 0).
    """
    if len(shape) != len(strides):
        raise ValueError(f"shape {shape} and strides {strides} differ in length")
    if any(n == 0 for n in shape):
        return 0, 0
    lo = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    return lo * itemsize, (hi + 1) * itemsize
