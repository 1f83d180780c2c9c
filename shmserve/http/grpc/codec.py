"""ModelInfer messages <-> numpy arrays.

Inputs arrive as ``raw_input_contents`` (one bytes entry per input that has
neither typed ``contents`` nor a shared-memory region, in input order: what
``tritonclient.grpc`` sends), as typed ``contents`` (``fp32_contents``, ...),
or as a region reference in the input's parameters. Raw inputs are viewed in
place (``np.frombuffer``). Outputs go back as ``raw_output_contents`` (one
entry per output, empty for an output written into a region).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...oip.datatypes import element_count, to_datatype, to_dtype
from ...oip.errors import InferError
from ...oip.references import check_output_region, input_from_region, region_ref
from ..v2.codec import RequestedOutput, select_outputs

if TYPE_CHECKING:
    from ...oip.regions import RegionTable

__all__ = ["parameters_of", "decode_inputs", "requested_outputs", "fill_response", "set_parameter"]

#: typed contents field of each datatype (FP16 has none: it travels raw)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}


def parameters_of(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict."""
    if not params:  # most tensors have none; iterating even an empty map goes through Python-level Mapping code
        return {}
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def set_parameter(params: Any, key: str, value: Any) -> None:
    """Set one ``InferParameter`` of a protobuf map from a Python value."""
    if isinstance(value, bool):
        params[key].bool_param = value
    elif isinstance(value, int):
        params[key].int64_param = value
    elif isinstance(value, float):
        params[key].double_param = value
    else:
        params[key].string_param = str(value)


def decode_inputs(request: Any, regions: "RegionTable | None") -> dict[str, np.ndarray]:
    """The named input arrays of a ``ModelInferRequest``; `InferError` 400 for a malformed one."""
    if not request.inputs:
        raise InferError(400, "ModelInferRequest needs at least one input")
    raw = request.raw_input_contents
    next_raw = 0
    inputs: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name in inputs:
            raise InferError(400, f"input {name!r} appears twice")
        dtype = to_dtype(tensor.datatype, name)
        shape = list(tensor.shape)
        count = element_count(shape, name)
        nbytes = count * dtype.itemsize
        ref = region_ref(parameters_of(tensor.parameters), f"input {name!r}") if tensor.parameters else None
        field = _CONTENTS.get(tensor.datatype)
        if ref is not None:
            arr = input_from_region(regions, ref, dtype, count, name, tensor.datatype, shape)
        elif field is not None and tensor.HasField("contents") and len(getattr(tensor.contents, field)):
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InferError(400, f"input {name!r}: {field} holds {len(values)} values but its shape needs {count}")
            try:
                arr = np.asarray(values, dtype=dtype)
            except (OverflowError, ValueError) as exc:
                raise InferError(400, f"input {name!r}: {field} values do not fit {tensor.datatype} ({exc})") from None
        else:
            if next_raw >= len(raw):
                raise InferError(400, f"input {name!r} has no data: no raw_input_contents entry is left for it, "
                                      "no typed contents and no shared_memory_region")
            data = raw[next_raw]
            next_raw += 1
            if len(data) != nbytes:
                raise InferError(400, f"input {name!r}: raw_input_contents of {len(data)} bytes does not match "
                                      f"shape {shape} of {tensor.datatype} ({nbytes} bytes)")
            arr = np.frombuffer(data, dtype, count)
        inputs[name] = arr.reshape(shape)
    if next_raw != len(raw):
        raise InferError(400, f"{len(raw) - next_raw} raw_input_contents entries are not claimed by any input")
    return inputs


def requested_outputs(request: Any, regions: "RegionTable | None") -> list[RequestedOutput] | None:
    """The request's ``outputs`` (None: all), region references checked now."""
    if not request.outputs:
        return None
    out = []
    for o in request.outputs:
        ref = region_ref(parameters_of(o.parameters), f"output {o.name!r}") if o.parameters else None
        if ref is not None:
            check_output_region(regions, ref, o.name)
        out.append(RequestedOutput(o.name, True, ref))
    return out


def fill_response(response: Any, outputs: list[tuple[str, np.ndarray]], requested: list[RequestedOutput] | None,
                  model: str, regions: "RegionTable | None") -> None:
    """Add the outputs to a ``ModelInferResponse`` (raw contents, or written into regions)."""
    raw = response.raw_output_contents
    for name, arr, want in select_outputs(outputs, requested, True, model):
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = to_datatype(arr.dtype, name)
        tensor.shape.extend(arr.shape)
        if want.region is not None:
            assert regions is not None
            written = regions.write(want.region, arr, f"output {name!r}")
            set_parameter(tensor.parameters, "shared_memory_region", want.region[0])
            set_parameter(tensor.parameters, "shared_memory_byte_size", written)
            raw.append(b"")  # keeps raw_output_contents aligned with outputs
        else:
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            raw.append(arr.tobytes())
