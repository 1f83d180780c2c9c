"""Conversions between user tensors and the numpy views that cross the transport.

The binary record that describes one tensor in an arena (`TensorMeta`, its
``TENSOR_HEADER`` struct) is declared with the rest of the wire in
`shmserve.shm.wire`.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .wire import MAX_NDIM, TENSOR_HEADER, TensorMeta  # noqa: F401  (TensorMeta is read from here too)

KIND_NUMPY = 0
KIND_TORCH = 1

_ALLOWED_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex


def is_torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_array(x: Any, where: str) -> tuple[np.ndarray, int, str]:
    """A user tensor as (numpy array sharing its memory where possible, kind, dtype string).

    Raises InvalidInput for tensors that cannot cross the transport.
    """
    if isinstance(x, np.ndarray):
        arr, kind = x, KIND_NUMPY
        dtype_str = _dtype_str(arr.dtype, where)
    else:  # torch CPU tensor (CUDA tensors are routed to shmserve.gpu before this)
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
    if arr.ndim > MAX_NDIM:
        raise InvalidInput(f"{where}: tensors of up to {MAX_NDIM} dimensions are supported, got {arr.ndim}")
    return arr, kind, dtype_str


_DTYPE_STRS: dict[np.dtype, str] = {}


def _dtype_str(dtype: np.dtype, where: str) -> str:
    known = _DTYPE_STRS.get(dtype)
    if known is not None:
        return known
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
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
    """The numpy dtype for a header's dtype string (cached: this is on the hot path)."""
    dt = _DTYPES.get(dtype_str)
    if dt is None:
        dt = np.dtype(np.int16) if dtype_str == "bf16" else np.dtype(dtype_str)
        if len(_DTYPES) < 256:
            _DTYPES[dtype_str] = dt
    return dt


def wrap(arr: np.ndarray, kind: int, dtype_str: str) -> Any:
    """The numpy view `arr` as the kind of tensor the caller sent."""
    if kind == KIND_TORCH:
        import torch

        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if dtype_str == "bf16" else t
    return arr
