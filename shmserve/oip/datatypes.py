"""v2 tensor datatypes and the numpy dtypes they map to.

Every numeric datatype of the protocol has a numpy dtype of the same layout
(little-endian, as the binary tensor data extension and ``raw_input_contents``
require). ``BYTES`` (length-prefixed strings) and ``BF16`` have none here: no
shmserve model takes them, so requests that use them are refused with a clear
`InferError` rather than decoded into something the model cannot use.
"""
from __future__ import annotations

import numpy as np

from ..tensors import HTTP
from .errors import InferError

__all__ = ["DATATYPES", "to_dtype", "to_datatype", "element_count"]

#: v2 datatype -> numpy dtype (little-endian)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in DATATYPES.items()}


def to_dtype(datatype: object, tensor: str) -> np.dtype:
    """The numpy dtype of a request tensor's `datatype`; `InferError` (400) when there is none."""
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is not None:
        return dtype
    if datatype == "BYTES":
        raise InferError(400, f"input {tensor!r}: datatype BYTES is not supported by shmserve models; "
                              "send a numeric tensor (BOOL, UINT8-64, INT8-64, FP16, FP32, FP64)")
    raise InferError(400, f"input {tensor!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")


def to_datatype(dtype: np.dtype, tensor: str) -> str:
    """The v2 datatype of an output array; `InferError` (500) for dtypes the protocol cannot carry."""
    name = _BY_DTYPE.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        raise InferError(500, f"output {tensor!r} has dtype {dtype}, which the Open Inference Protocol "
                              "cannot carry; return a numeric or bool array")
    return name


def element_count(shape: list[int] | tuple[int, ...], tensor: str) -> int:
    """The number of elements of `shape`, checked to be a list of non-negative ints.

    At most `shmserve.tensors.HTTP`'s dimensions, the limit of every request body
    (a runner method further needs the transport's, which the runner client checks).
    """
    if len(shape) > HTTP.max_ndim:
        raise InferError(400, f"input {tensor!r}: shape {list(shape)!r} has {len(shape)} dimensions; "
                              f"tensors of up to {HTTP.max_ndim} dimensions are supported")
    n = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InferError(400, f"input {tensor!r}: shape {list(shape)!r} must be a list of non-negative integers")
        n *= d
    return n
