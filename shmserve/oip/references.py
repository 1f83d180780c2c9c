"""Tensor references into client shared-memory regions, as both transports carry them in ``parameters``.

An input or requested output may carry ``shared_memory_region`` (the
registered name), ``shared_memory_byte_size`` and ``shared_memory_offset``
(default 0) instead of data. These helpers read and check them the same way
for REST and gRPC.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InferError

if TYPE_CHECKING:
    from .regions import RegionTable

__all__ = ["RegionRef", "region_ref", "input_from_region", "check_output_region", "output_destination"]

#: (region name, offset, byte size)
RegionRef = tuple[str, int, int]

_OFF = "client shared memory is off on this server; start it with --allow-client-shm"


def region_ref(params: dict[str, Any], where: str) -> RegionRef | None:
    """The region reference in `params`, or None; `InferError` 400 when malformed."""
    name = params.get("shared_memory_region")
    if name is None:
        return None
    size = params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset", 0)
    if not isinstance(name, str):
        raise InferError(400, f"{where}: 'shared_memory_region' must be a region name (a string)")
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InferError(400, f"{where}: {key!r} must be an integer, got {value!r}")
    assert isinstance(size, int) and isinstance(offset, int)
    return name, offset, size


def input_from_region(regions: "RegionTable | None", ref: RegionRef, dtype: np.dtype, count: int,
                      name: str, datatype: str, shape: list[int]) -> np.ndarray:
    """The input `name` viewed in its region (no copy), after checking the reference."""
    if regions is None:
        raise InferError(400, f"input {name!r} names a shared-memory region, but {_OFF}")
    nbytes = count * dtype.itemsize
    if ref[2] != nbytes:
        raise InferError(400, f"input {name!r}: shared_memory_byte_size {ref[2]} does not match shape "
                              f"{shape} of {datatype} ({nbytes} bytes)")
    return np.frombuffer(regions.view(ref[0], ref[1], ref[2], f"input {name!r}"), dtype, count)


def check_output_region(regions: "RegionTable | None", ref: RegionRef, name: str) -> None:
    """Refuse a bad output reference before the model runs."""
    if regions is None:
        raise InferError(400, f"output {name!r} names a shared-memory region, but {_OFF}")
    regions.view(ref[0], ref[1], ref[2], f"output {name!r}")


def output_destination(model: Any, requested: Sequence[Any], regions: "RegionTable | None") -> np.ndarray | None:
    """The bytes a runner worker may write `model`'s result into (`shmserve.shm.extra.OUTPUT_TO`): the
    region reference of the request's one requested output, when that is the one output of a runner
    method (whose result is that array); None otherwise (then the result is copied into the region)."""
    if regions is None or len(requested) != 1 or not model.result_in_place:
        return None
    want = requested[0]
    if want.region is None or want.name != model.outputs[0].name:
        return None
    name, offset, byte_size = want.region
    return np.frombuffer(regions.view(name, offset, byte_size, f"output {want.name!r}"), np.uint8)
