"""v2 inference request and response bodies over REST: JSON tensors and binary tensor data.

A request body is a JSON object, optionally followed by raw tensor bytes (the
binary tensor data extension): the ``Inference-Header-Content-Length`` header
gives the JSON part's length, and each input whose ``parameters`` carry
``binary_data_size`` takes that many bytes, in input order. Binary inputs are
viewed in place (``np.frombuffer`` over the body), so the only copy of the
tensor on its way to the model is the runner client's write into its
shared-memory arena. An input may instead name a registered system
shared-memory region (``shared_memory_region``, ``shared_memory_offset``,
``shared_memory_byte_size``); then it is viewed in that region.

A response carries each output as JSON ``data`` or, when asked
(``binary_data_output`` for all outputs, an output's ``binary_data``), as raw
bytes after the JSON part, with ``binary_data_size`` in the output's
parameters. An output that names a region is written into it instead.

A large body is decoded in steps (`decode_request_steps`, see
`shmserve.jsonscan`): decompressed a MiB at a time, its JSON cut into pieces,
and each input's ``data`` read straight into an ndarray of its datatype
(`shmserve.jsonvalue.NumberSpan`), so the event loop is never held for long and
no Python float is made per number. `decode_request` does the same at once.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ...errors import InvalidInput
from ...jsonarray import span_steps, to_array
from ...jsonscan import Steps, run
from ...jsonvalue import NumberSpan, value_steps
from ...oip.datatypes import element_count, to_datatype, to_dtype
from ...oip.errors import InferError
from ...oip.references import RegionRef, check_output_region, input_from_region, region_ref

if TYPE_CHECKING:
    from ...oip.regions import RegionTable

__all__ = ["InferRequest", "RequestedOutput", "decode_request", "decode_request_steps", "encode_response",
           "HEADER_LENGTH"]

HEADER_LENGTH = b"inference-header-content-length"
_CT_JSON = b"application/json"
_CT_OCTET = b"application/octet-stream"
_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
#: each input's ``data``, read as a `NumberSpan` when it is large
_DATA_PATHS = frozenset({("inputs", None, "data")})
#: compressed bytes fed to zlib per step, and decompressed bytes taken per step
_INFLATE_IN, _INFLATE_OUT = 64 * 1024, 1024 * 1024


@dataclass
class RequestedOutput:
    """An entry of the request's ``outputs``: how the client wants that output back."""

    name: str
    binary: bool
    region: RegionRef | None = None


@dataclass
class InferRequest:
    """A decoded inference request."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    region_names: list[str] = field(default_factory=list)


def _decompress(body: bytes, encoding: bytes, limit: int) -> Steps[bytearray]:
    """The decompressed body, a MiB per step; a bytearray grows in place where ``b"".join`` would fault a new one."""
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None:
        raise InferError(415, f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send gzip, deflate or none")
    d = zlib.decompressobj(wbits)
    out = bytearray()
    view = memoryview(body)
    try:
        for at in range(0, len(body), _INFLATE_IN):
            data: Any = view[at:at + _INFLATE_IN]
            while data and not d.eof:
                out += d.decompress(data, _INFLATE_OUT)
                if len(out) > limit:
                    raise InferError(413, f"decompressed request body exceeds the limit of {limit} bytes")
                data = d.unconsumed_tail
                yield
            if d.eof:
                break
        out += d.flush()
    except zlib.error as exc:
        raise InferError(400, f"request body is not valid {encoding.decode('latin-1')} data ({exc})") from None
    if len(out) > limit:
        raise InferError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    return out


_NO_PARAMETERS: dict[str, Any] = {}  # shared, never written to


def _parameters(obj: dict[str, Any], what: str, name: str = "") -> dict[str, Any]:
    """`obj`'s ``parameters``; `what` and `name` say whose, for the error (not formatted unless needed)."""
    params = obj.get("parameters")
    if params is None:
        return _NO_PARAMETERS
    if type(params) is not dict:
        where = f"{what} {name!r}" if name else what
        raise InferError(400, f"{where}: 'parameters' must be a JSON object, got {type(params).__name__}")
    return params


def decode_request(body: bytes, headers: dict[bytes, bytes], regions: "RegionTable | None",
                   max_body_bytes: int) -> InferRequest:
    """Decode an inference request body; `InferError` (400, 413, 415) says what is wrong with it."""
    return run(decode_request_steps(body, headers, regions, max_body_bytes))


def decode_request_steps(body: Any, headers: dict[bytes, bytes], regions: "RegionTable | None",
                         max_body_bytes: int) -> Steps[InferRequest]:
    """`decode_request` in steps (see the module docstring)."""
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() != b"identity":
        body = yield from _decompress(body, encoding, max_body_bytes)
    raw_len = headers.get(HEADER_LENGTH)
    if raw_len is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            n = int(raw_len)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InferError(400, f"Inference-Header-Content-Length {raw_len.decode('latin-1')!r} must be the "
                                  f"byte length of the JSON part, between 0 and the body's {len(body)} bytes")
        json_part, binary = body[:n], memoryview(body)[n:]
    try:
        obj = yield from value_steps(json_part, number_paths=_DATA_PATHS)
    except InvalidInput as exc:
        raise InferError(400, f"inference request: {exc}; binary tensor data needs the "
                              "Inference-Header-Content-Length header") from None
    if not isinstance(obj, dict):
        raise InferError(400, f"inference request must be a JSON object, got a JSON {type(obj).__name__}")
    req_id = obj.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InferError(400, f"request 'id' must be a string, got {req_id!r}")
    parameters = _parameters(obj, "request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InferError(400, "parameter 'binary_data_output' must be true or false")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InferError(400, "inference request needs 'inputs': a non-empty list of tensors "
                              "({\"name\", \"datatype\", \"shape\", \"data\"})")
    inputs: dict[str, np.ndarray] = {}
    cursor = 0
    region_names: list[str] = []
    for i, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InferError(400, f"inputs[{i}] must be an object with a string 'name'")
        name = tensor["name"]
        if name in inputs:
            raise InferError(400, f"input {name!r} appears twice")
        dtype = to_dtype(tensor.get("datatype"), name)
        shape = tensor.get("shape")
        if not isinstance(shape, list):
            raise InferError(400, f"input {name!r} needs 'shape': a list of integers")
        count = element_count(shape, name)
        nbytes = count * dtype.itemsize
        params = _parameters(tensor, "input", name)
        size = params.get("binary_data_size")
        ref = region_ref(params, f"input {name!r}") if "shared_memory_region" in params else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != nbytes:
                raise InferError(400, f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of "
                                      f"{tensor.get('datatype')} ({nbytes} bytes)")
            if cursor + size > len(binary):
                raise InferError(400, f"input {name!r}: binary data ends after {len(binary) - cursor} of its {size} bytes")
            arr = np.frombuffer(binary, dtype, count, cursor)
            cursor += size
        elif ref is not None:
            arr = input_from_region(regions, ref, dtype, count, name, str(tensor.get("datatype")), shape)
            region_names.append(ref[0])
        elif "data" in tensor:
            arr = yield from _from_json(tensor["data"], dtype, count, name)
        else:
            raise InferError(400, f"input {name!r} has no 'data', no 'binary_data_size' and no 'shared_memory_region'")
        inputs[name] = arr.reshape(shape)
    if cursor != len(binary):
        raise InferError(400, f"{len(binary) - cursor} bytes of binary data follow the inputs that no "
                              "input's binary_data_size accounts for")
    outputs = None
    raw_outputs = obj.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InferError(400, "'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for i, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InferError(400, f"outputs[{i}] must be an object with a string 'name'")
            oparams = _parameters(out, "output", out["name"])
            binary_flag = oparams.get("binary_data", binary_output)
            if not isinstance(binary_flag, bool):
                raise InferError(400, f"output {out['name']!r}: 'binary_data' must be true or false")
            oref = region_ref(oparams, f"output {out['name']!r}") if "shared_memory_region" in oparams else None
            if oref is not None:
                check_output_region(regions, oref, out["name"])
            outputs.append(RequestedOutput(out["name"], binary_flag, oref))
    return InferRequest(req_id, parameters, inputs, outputs, binary_output, region_names)


def _from_json(data: Any, dtype: np.dtype, count: int, name: str) -> Steps[np.ndarray]:
    """An input's JSON ``data`` (numbers, flat or nested, or a large `NumberSpan`) as a flat array."""
    try:
        if isinstance(data, NumberSpan):
            arr = yield from span_steps(data.body, data.open_at, data.close_at, dtype)
        else:
            arr = to_array(data if isinstance(data, list) else [data], dtype, may_hold_strings=True)
    except InvalidInput as exc:
        raise InferError(400, f"input {name!r}: 'data' must be numbers of its datatype, in row-major order ({exc})") from None
    if arr.size != count:
        raise InferError(400, f"input {name!r}: 'data' holds {arr.size} values but its shape needs {count}")
    return arr.reshape(-1)


def select_outputs(outputs: list[tuple[str, np.ndarray]], requested: list[RequestedOutput] | None,
                   binary_output: bool, model: str) -> list[tuple[str, np.ndarray, RequestedOutput]]:
    """The outputs to return, each with how to return it; `InferError` 400 for an unknown requested name."""
    if requested is None:
        return [(name, arr, RequestedOutput(name, binary_output)) for name, arr in outputs]
    by_name = dict(outputs)
    out = []
    for want in requested:
        arr = by_name.get(want.name)
        if arr is None:
            raise InferError(400, f"model {model!r} has no output {want.name!r}; it returned {sorted(by_name)}")
        out.append((want.name, arr, want))
    return out


def encode_response(model_name: str, model_version: str, request: InferRequest,
                    outputs: list[tuple[str, np.ndarray]], regions: "RegionTable | None"
                    ) -> tuple[bytes, bytes, bytes]:
    """``(content type, body, extra header lines)`` of the inference response."""
    chosen = select_outputs(outputs, request.outputs, request.binary_output, model_name)
    entries = []
    chunks: list[Any] = []
    for name, arr, want in chosen:
        datatype = to_datatype(arr.dtype, name)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if want.region is not None:
            assert regions is not None
            written = regions.write(want.region, arr, f"output {name!r}")
            entry["parameters"] = {"shared_memory_region": want.region[0], "shared_memory_byte_size": written}
        elif want.binary:
            if not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
                arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
            entry["parameters"] = {"binary_data_size": arr.nbytes}
            chunks.append(arr.data.cast("B") if arr.ndim else arr.tobytes())
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = entries
    json_part = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return _CT_JSON, json_part, b""
    return _CT_OCTET, b"".join((json_part, *chunks)), b"inference-header-content-length: %d\r\n" % len(json_part)
