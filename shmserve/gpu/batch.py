"""Batching on the device: several callers' tensors become one, outputs split back as views.

Two ways to coalesce, switchable per call or with ``SHMSERVE_GPU_BATCH``:

* ``"kernel"``: one launch of `gather_bytes` from ``cuda/gather.cu`` (compiled
  at run time with cupy.RawModule) copies every caller's bytes into the batch;
  works for torch tensors and CuPy arrays alike, needs CuPy, dim 0 and
  contiguous inputs.
* ``"cat"``: the framework's own concatenate (``torch.cat`` / ``cupy.concatenate``).

``"auto"`` (the default) takes the kernel when it applies, CuPy is installed
and ``gather.cu`` is found (`kernel_path`), else ``cat``. Which is faster is for ``perf/gpu_bench.py`` to say.
Splitting never copies: the per-caller outputs are views of the batch output
(`shmserve.tensors.split`, which every tensor kind shares).

Not part of ``shmserve.gpu``'s public surface: the serving path does not batch
calls that carry CUDA tensors (each call has its own IPC handles), and joins
host tensors with `shmserve.tensors.join`. ``perf/gpu_bench.py`` measures
these methods against each other.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..tensors import NUMPY, is_device, kind_of, plan, split
from .frameworks import empty, require

METHODS = ("auto", "kernel", "cat")
KERNEL_FILE = "gather.cu"
KERNEL_NAMES = ("gather_bytes", "scatter_bytes")
THREADS = 256
MAX_BLOCKS_X = 1024


@dataclass(frozen=True)
class DeviceBatch:
    """A coalesced batch: `tensor` holds the callers' inputs back to back along `dim`."""

    tensor: Any
    sizes: tuple[int, ...]
    dim: int
    method: str

    def split(self, output: Any, dim: int | None = None) -> list[Any]:
        """Per-caller views of a batch `output` (no copy); `dim` defaults to the input dim."""
        return split(output, self.sizes, self.dim if dim is None else dim)


def choose_method(method: str, kind: str, dim: int, contiguous: bool, have_cupy: bool,
                  have_source: bool = True) -> str:
    """The coalescing method to use (pure policy, see the module docstring).

    `have_source`: whether ``gather.cu`` can be found (`kernel_path`); a wheel
    install has no ``cuda/`` folder unless ``$SHMSERVE_CUDA_DIR`` points at one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown batching method {method!r}; use one of {METHODS}")
    kernel_ok = dim == 0 and contiguous
    if method == "kernel":
        if not have_cupy:
            raise ImportError("the gather kernel needs CuPy: pip install 'shmserve[cupy]', or use method='cat'")
        if not kernel_ok:
            raise ValueError("the gather kernel joins contiguous tensors along dim 0 only; use method='cat'")
        if not have_source:
            raise FileNotFoundError(f"CUDA kernel source {kernel_path()} is missing; set SHMSERVE_CUDA_DIR to the "
                                    f"folder holding {KERNEL_FILE}, or use method='cat'")
        return "kernel"
    if method == "auto":
        return "kernel" if kernel_ok and have_cupy and have_source else "cat"
    return "cat"


def coalesce(tensors: Sequence[Any], dim: int = 0, method: str | None = None) -> DeviceBatch:
    """Join callers' tensors along `dim` into one tensor on their device.

    A single tensor is returned as is (no copy). All inputs must share kind,
    device and dtype. `method` is ``"auto"``, ``"kernel"`` or ``"cat"``
    (default: ``$SHMSERVE_GPU_BATCH`` or ``"auto"``).
    """
    method = method or settings.gpu_batch()
    kinds = {_kind(t) for t in tensors}
    if len(kinds) != 1:
        raise ValueError(f"cannot batch a mix of {sorted(kinds)} tensors")
    kind = kinds.pop()
    devices = {str(t.device) for t in tensors}
    dtypes = {str(t.dtype) for t in tensors}
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(f"batched inputs must share one device and dtype, got devices {sorted(devices)}, dtypes {sorted(dtypes)}")
    sizes, shape = plan([tuple(t.shape) for t in tensors], dim)
    dim %= len(shape)
    if len(tensors) == 1:
        return DeviceBatch(tensors[0], sizes, dim, "none")
    contiguous = all(_is_contiguous(t) for t in tensors)
    # The kernel reads device memory: host (torch CPU) tensors always take cat.
    cupy_ok = all(is_device(t) for t in tensors) and _have_cupy()
    chosen = choose_method(method, kind, dim, contiguous, cupy_ok, cupy_ok and kernel_path().is_file())
    if chosen == "cat":
        mod = sys.modules[kind] if kind in sys.modules else require(kind)
        out = mod.cat(list(tensors), dim) if kind == "torch" else mod.concatenate(list(tensors), axis=dim)
        return DeviceBatch(out, sizes, dim, "cat")
    return DeviceBatch(_gather(kind, tensors, shape), sizes, dim, "kernel")


def _kind(t: Any) -> str:
    kind = kind_of(t)
    if kind is None or kind is NUMPY:
        raise TypeError(f"expected torch tensors or CuPy arrays, got {type(t).__name__}")
    return kind.module  # torch CPU tensors batch with torch.cat too (used by tests and CPU fallbacks)


def _is_contiguous(t: Any) -> bool:
    return bool(t.is_contiguous()) if hasattr(t, "is_contiguous") else bool(t.flags.c_contiguous)


def _have_cupy() -> bool:
    return "cupy" in sys.modules or importlib.util.find_spec("cupy") is not None


def kernel_path() -> Path:
    """Where ``gather.cu`` lives: ``$SHMSERVE_CUDA_DIR`` or the ``cuda/`` folder of the source tree."""
    folder = settings.cuda_dir()
    path = folder if folder is not None else Path(__file__).resolve().parents[2] / "cuda"
    return path / KERNEL_FILE


def kernel_source() -> str:
    """The CUDA source of the gather/scatter kernels."""
    path = kernel_path()
    try:
        return path.read_text()
    except OSError as exc:
        raise FileNotFoundError(
            f"CUDA kernel source {path} is missing; set SHMSERVE_CUDA_DIR to the folder holding {KERNEL_FILE}"
        ) from exc


@functools.lru_cache(maxsize=8)
def _kernels(pid: int, device: int) -> tuple[Any, Any]:
    cupy = require("cupy")
    with cupy.cuda.Device(device):
        module = cupy.RawModule(code=kernel_source(), options=("--std=c++14",))
        return module.get_function("gather_bytes"), module.get_function("scatter_bytes")


def launch_shape(max_bytes: int, n: int) -> tuple[tuple[int, int], tuple[int]]:
    """(grid, block) for `n` ranges of at most `max_bytes`: enough blocks for one
    16-byte vector per thread, capped (grid-stride loops do the rest)."""
    per_block = THREADS * 16
    blocks = max(1, min(MAX_BLOCKS_X, -(-max_bytes // per_block)))
    if n > 65535:
        raise ValueError(f"cannot gather {n} ranges in one launch (grid y is at most 65535)")
    return (blocks, n), (THREADS,)


def _gather(kind: str, tensors: Sequence[Any], shape: tuple[int, ...]) -> Any:
    import numpy as np

    cupy = require("cupy")
    from .frameworks import current_stream, describe

    infos = [describe(t) for t in tensors]
    device = infos[0].device
    out = empty(kind, shape, infos[0].dtype, device)
    nbytes = [_nbytes(t) for t in tensors]
    table = np.zeros(2 * len(tensors) + 1, dtype=np.uint64)
    table[: len(tensors)] = [i.ptr for i in infos]
    table[len(tensors) + 1:] = np.cumsum(nbytes, dtype=np.uint64)
    gather, _ = _kernels(os.getpid(), device)
    grid, block = launch_shape(max(nbytes), len(tensors))
    with cupy.cuda.Device(device), cupy.cuda.ExternalStream(current_stream(kind, device)):
        # Uploaded on the same stream as the launch; CuPy's pool keeps the
        # table's block from being reused before that stream passes it.
        dev_table = cupy.asarray(table)
        srcs = dev_table[: len(tensors)]
        offsets = dev_table[len(tensors):]
        gather(grid, block, (srcs, offsets, np.uint64(_ptr(out)), np.int32(len(tensors))))
    return out


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if hasattr(t, "element_size") else int(t.nbytes)


def _ptr(t: Any) -> int:
    return int(t.data_ptr()) if hasattr(t, "data_ptr") else int(t.data.ptr)
