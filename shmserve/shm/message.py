"""Calls and results as (tensors, metadata): what crosses a channel.

Tensors travel as raw bytes in an arena, described by TensorHeaders. Every
other value (scalars, strings, small dicts) and the *structure* of the call
or result travel as compact orjson metadata, which refers to tensors by
index. Metadata is never pickled and never holds tensor data: an array nested
inside a list or dict is refused.

Call metadata: ``{"a": [spec, ...], "k": {name: spec}}``; empty when the call
is exactly one positional tensor (the hot path).
Result metadata: ``{"s": spec}``.
A spec is ``{"T": i}`` (shared-memory tensor i), ``{"G": handle}`` (a CUDA
tensor sent as an IPC handle, see `shmserve.gpu`), ``{"B": i}`` (bytes, carried
as raw tensor i), ``{"P": i, "m": mode}`` (a PIL image: pixel array i and its
mode; see `shmserve.shm.objects`), ``{"F": [[name, spec], ...], "i": index}``
(a DataFrame: ``{"A": i}``, raw array i, per numeric or bool column, ``{"v": [...]}``
for the others; ``"i"`` is null for a default index), ``{"v": value}``,
``{"t": [spec, ...]}`` (tuple), ``{"l": [spec, ...]}`` (list) or
``{"d": {key: spec}}`` (dict holding tensors). Either side may add
``"r": [token, ...]``: CUDA hand-offs of the peer it no longer uses.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson

from ..errors import InvalidInput
from ..tensors import KIND_NUMPY, is_tensor, numpy_dtype, to_wire
from ..tensors import is_device as is_device_tensor
from .objects import (
    CROSSES,
    KIND_RAW,
    bytes_array,
    frame_columns,
    frame_from_columns,
    image_array,
    image_from_array,
    is_bytes,
    is_dataframe,
    is_raw,
)
from .wire import Tensor, layout

_NO_GPU = "CUDA tensors need the GPU transport, which this process could not load"


class DeviceCodec(Protocol):
    """What carries CUDA tensors: `shmserve.gpu.HandoffLedger`."""

    def encode(self, value: Any, peer_pid: int | None = None) -> Any: ...

    def decode(self, value: Any, copy: bool = False) -> Any: ...

    def take_back(self, tokens: list[int]) -> None: ...


DeviceGetter = Callable[[], DeviceCodec]


def _carried(x: Any) -> bool:
    """Travels outside the JSON metadata: a tensor or a raw buffer."""
    return is_tensor(x) or is_raw(x)


_NESTED = ("tensors, bytes and images are accepted only as top-level arguments or results (or a result's "
           "top-level tuple, list or dict), not nested deeper")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if is_tensor(obj) or is_raw(obj):
        raise TypeError(_NESTED)
    raise TypeError(f"values of type {type(obj).__name__} cannot cross the transport; what crosses: {CROSSES}")


def dumps(value: Any, where: str) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        if "ndarray" in str(exc):  # orjson refuses arrays itself, before calling `default`
            raise InvalidInput(f"{where}: {_NESTED}") from None
        cause = exc.__cause__  # what `_default` said, when it was called
        raise InvalidInput(f"{where}: {cause if cause is not None else exc}") from None


def encode_call(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    device: DeviceGetter | None = None,
    releases: list[int] | None = None,
) -> tuple[list[Tensor], bytes]:
    """Split a call into tensors and metadata.

    `device` supplies the codec for CUDA tensors (created on first use);
    `releases` are hand-off tokens to return to the peer.
    """
    if len(args) == 1 and not kwargs and not releases and isinstance(args[0], np.ndarray):
        return [to_wire(args[0], "argument 0")], b""
    tensors: list[Tensor] = []

    def spec(value: Any, where: str) -> dict[str, Any]:
        if is_tensor(value):
            if is_device_tensor(value):
                if device is None:
                    raise InvalidInput(f"{where}: {_NO_GPU}")
                return {"G": device().encode(value)}
            tensors.append(to_wire(value, where))
            return {"T": len(tensors) - 1}
        if is_raw(value):
            return _raw_spec(value, where, tensors)
        return {"v": value}

    meta: dict[str, Any] = {
        "a": [spec(v, f"argument {i}") for i, v in enumerate(args)],
        "k": {k: spec(v, f"argument {k!r}") for k, v in kwargs.items()},
    }
    if releases:
        meta["r"] = releases
    return tensors, dumps(meta, "call")


def decode_call(
    tensors: list[Any], meta: bytes, device: DeviceGetter | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Rebuild (args, kwargs) from decoded tensors and call metadata."""
    if not meta:
        return list(tensors), {}
    m = orjson.loads(meta)
    if m.get("r") and device is not None:
        device().take_back(m["r"])
    return (
        [_value(s, tensors, device) for s in m["a"]],
        {k: _value(s, tensors, device) for k, s in m["k"].items()},
    )


def _raw_spec(value: Any, where: str, tensors: list[Tensor]) -> dict[str, Any]:
    """Append a bytes value or PIL image to `tensors` as a raw buffer; its spec."""
    if is_bytes(value):
        tensors.append((bytes_array(value), KIND_RAW, "|u1"))
        return {"B": len(tensors) - 1}
    if is_dataframe(value):
        cols, index = frame_columns(value, where)
        specs = []
        for name, arr, values in cols:
            if arr is None:
                specs.append([name, {"v": values}])
                continue
            column, _kind, dtype_str = to_wire(arr, f"{where} column {name!r}")
            tensors.append((column, KIND_RAW, dtype_str))
            specs.append([name, {"A": len(tensors) - 1}])
        return {"F": specs, "i": index}
    arr, mode = image_array(value, where)
    pixels, _kind, dtype_str = to_wire(arr, where)
    tensors.append((pixels, KIND_RAW, dtype_str))
    return {"P": len(tensors) - 1, "m": mode}


def _raw_value(spec: dict[str, Any], tensors: list[Any]) -> Any:
    """Rebuild a raw-buffer value (its data copied out of the arena)."""
    if "B" in spec:
        return bytes(tensors[spec["B"]])
    if "F" in spec:
        names = [name for name, _ in spec["F"]]
        cols = [tensors[s["A"]] if "A" in s else s["v"] for _, s in spec["F"]]
        return frame_from_columns(names, cols, spec["i"])
    return image_from_array(tensors[spec["P"]], spec["m"])


def _value(spec: dict[str, Any], tensors: list[Any], device: DeviceGetter | None) -> Any:
    if "T" in spec:
        return tensors[spec["T"]]
    if "B" in spec or "P" in spec or "F" in spec:
        return _raw_value(spec, tensors)
    if "G" in spec:
        if device is None:
            raise InvalidInput(_NO_GPU)
        return device().decode(spec["G"])
    return spec["v"]


def encode_result(
    value: Any, where: str = "result", device: DeviceGetter | None = None, releases: list[int] | None = None
) -> tuple[list[Tensor], bytes]:
    """Split a method's return value into tensors and metadata."""
    if isinstance(value, np.ndarray) and not releases:
        return [to_wire(value, where)], b""
    tensors: list[Tensor] = []

    def spec(v: Any) -> Any:
        if is_tensor(v):
            if is_device_tensor(v):
                if device is None:
                    raise InvalidInput(f"{where}: {_NO_GPU}")
                return {"G": device().encode(v)}
            tensors.append(to_wire(v, where))
            return {"T": len(tensors) - 1}
        if is_raw(v):
            return _raw_spec(v, where, tensors)
        if isinstance(v, tuple) and any(_carried(x) for x in v):
            return {"t": [spec(x) for x in v]}
        if isinstance(v, list) and any(_carried(x) for x in v):
            return {"l": [spec(x) for x in v]}
        if isinstance(v, dict) and any(_carried(x) for x in v.values()):
            return {"d": {k: spec(x) for k, x in v.items()}}
        return {"v": v}

    meta: dict[str, Any] = {"s": spec(value)}
    if releases:
        meta["r"] = releases
    return tensors, dumps(meta, where)


def decode_result(tensors: list[Any], meta: bytes, device: DeviceGetter | None = None) -> Any:
    """Rebuild a return value from decoded tensors and result metadata."""
    if not meta:
        return tensors[0]
    m = orjson.loads(meta)
    if m.get("r") and device is not None:
        device().take_back(m["r"])
    return _rebuild(m["s"], tensors, device)


def _rebuild(spec: dict[str, Any], tensors: list[Any], device: DeviceGetter | None = None) -> Any:
    if "T" in spec:
        return tensors[spec["T"]]
    if "v" in spec:
        return spec["v"]
    if "B" in spec or "P" in spec or "F" in spec:
        return _raw_value(spec, tensors)
    if "G" in spec:
        if device is None:
            raise InvalidInput(_NO_GPU)
        return device().decode(spec["G"])
    if "t" in spec:
        return tuple(_rebuild(s, tensors, device) for s in spec["t"])
    if "l" in spec:
        return [_rebuild(s, tensors, device) for s in spec["l"]]
    return {k: _rebuild(s, tensors, device) for k, s in spec["d"].items()}


def view(buf: Any, offset: int, nbytes: int, dtype_str: str, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy view of `nbytes` at `offset` of `buf`."""
    return np.ndarray(shape, numpy_dtype(dtype_str), buf, offset)


__all__ = [
    "KIND_NUMPY",
    "KIND_RAW",
    "Tensor",
    "encode_call",
    "decode_call",
    "encode_result",
    "decode_result",
    "layout",
    "view",
]
