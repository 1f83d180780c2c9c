"""`IODescriptor`, the base of every IO descriptor, and what all descriptors share.

`shmserve.io` (arrays, JSON, text) and `shmserve.io_media` (images, files,
multipart, tables) both build on this module, so neither imports the other's
internals.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .errors import BodyTooLarge
from .jsonscan import Steps
from .tensors import is_tensor, to_list

__all__ = ["Headers", "IODescriptor", "MAX_ONE_CALL_JSON_BYTES", "check_one_call", "dumps_json", "dumps_json_steps", "json_in_steps", "media_type"]

Headers = Mapping[bytes, bytes]


class IODescriptor:
    """Base class of IO descriptors: decode a request body, encode a result.

    Subclasses implement `decode`, `encode` and the two OpenAPI helpers.
    """

    #: media types accepted in requests, for the OpenAPI document.
    request_media_types: tuple[str, ...] = ()
    #: media types a response may take, for the OpenAPI document.
    response_media_types: tuple[str, ...] = ()

    def decode(self, body: bytes, headers: Headers) -> Any:
        """Turn a request body (and its lower-cased header names) into the API argument."""
        raise NotImplementedError

    def decode_in_steps(self, body: bytes, headers: Headers) -> bool:
        """True when decoding `body` takes long enough that the server should call `decode_async` instead."""
        return False

    async def decode_async(self, body: bytes, headers: Headers) -> Any:
        """`decode`, letting the event loop run between steps of it (see `shmserve.jsonscan`).

        The default decodes at once; descriptors of large JSON bodies decode a piece at a time.
        """
        return self.decode(body, headers)

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Return ``(content_type, body, extra_header_lines)`` for an API result.

        `extra_header_lines` is zero or more complete ``name: value\\r\\n`` lines.
        """
        raise NotImplementedError

    def encode_in_steps(self, value: Any, accept: bytes) -> bool:
        """True when writing `value` takes long enough that the server should call `encode_async` instead."""
        return False

    async def encode_async(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """`encode`, letting the event loop run between steps of it; the default encodes at once."""
        return self.encode(value, accept)

    def openapi_schema(self) -> dict[str, Any]:
        """The JSON schema of this descriptor's JSON form."""
        return {}

    def openapi_request_body(self) -> dict[str, Any]:
        """The OpenAPI ``requestBody`` object."""
        schema = self.openapi_schema()
        content: dict[str, Any] = {}
        for mt in self.request_media_types:
            content[mt] = {"schema": schema} if mt == "application/json" else {"schema": {"type": "string", "format": "binary"}}
        return {"required": True, "content": content}

    def openapi_responses(self) -> dict[str, Any]:
        """The OpenAPI ``content`` object of a successful response."""
        schema = self.openapi_schema()
        content: dict[str, Any] = {}
        for mt in self.response_media_types:
            content[mt] = {"schema": schema} if mt == "application/json" else {"schema": {"type": "string", "format": "binary"}}
        return content


def media_type(headers: Headers) -> bytes:
    """The request's media type: the Content-Type without parameters, lower case (empty when absent)."""
    ct = headers.get(b"content-type")
    if not ct:
        return b""
    mt = _MEDIA_TYPES.get(ct)  # a server sees few distinct values: one lookup instead of four calls per request
    if mt is None:
        semi = ct.find(b";")
        mt = (ct if semi < 0 else ct[:semi]).strip().lower()
        if len(_MEDIA_TYPES) < 256:
            _MEDIA_TYPES[ct] = mt
    return mt


_MEDIA_TYPES: dict[bytes, bytes] = {}  # Content-Type value -> `media_type`


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if is_tensor(value):  # orjson writes C-contiguous native numpy arrays itself; these are the others
        return to_list(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


#: default `max_json_bytes` of the descriptors that read JSON in one call they cannot split (pydantic
#: validation ~3 ms per MB, a pandas DataFrame from records up to ~40 ms per MB on a loaded 2-core machine)
MAX_ONE_CALL_JSON_BYTES = 4 * 1024 * 1024


def check_one_call(body: bytes, limit: int | None, what: str, hint: str = "") -> None:
    """Refuse (`BodyTooLarge`, HTTP 413) a JSON `body` over `limit` bytes that `what` reads in one call."""
    if limit is not None and len(body) > limit:
        raise BodyTooLarge(f"the JSON body is {len(body)} bytes; {what} reads at most {limit} bytes of JSON, in one "
                           f"call that holds the server's event loop: send a smaller body{hint}, or raise "
                           f"{what.split('(')[0]}(max_json_bytes=...)")


#: array bytes (or list items times 8) over which a value's JSON is written in steps (`dumps_json_steps`)
ENCODE_STEP_BYTES = 1024 * 1024
_PIECE_BYTES = 256 * 1024  # array bytes written per step
_PIECE_ITEMS = 8192  # list items written per step


def json_in_steps(value: Any, step_bytes: int = ENCODE_STEP_BYTES) -> bool:
    """Whether `value` is large enough for `dumps_json_steps`: an ndarray of over `step_bytes`, a list or tuple
    of many items, or a dict, list or tuple holding such an array among its first items."""
    if isinstance(value, np.ndarray):
        return value.ndim > 0 and value.nbytes > step_bytes
    if isinstance(value, dict):
        return any(isinstance(v, (np.ndarray, list)) and json_in_steps(v, step_bytes)
                   for v in itertools.islice(value.values(), 64))
    if isinstance(value, (list, tuple)):
        return len(value) * 8 > step_bytes or any(isinstance(v, np.ndarray) and json_in_steps(v, step_bytes)
                                                  for v in value[:64])
    return False


def dumps_json_steps(value: Any, step_bytes: int = ENCODE_STEP_BYTES, piece_bytes: int = _PIECE_BYTES,
                     piece_items: int = _PIECE_ITEMS) -> Steps[bytes]:
    """`dumps_json` in steps of about `piece_bytes` of array data or `piece_items` list items each.

    Large arrays are written a block of rows at a time, large lists a slice of
    items at a time, and a dict or list holding large arrays one member at a
    time; the pieces (with the brackets and commas between them) are joined
    once at the end, so the bytes equal ``dumps_json(value)``.
    """
    if not json_in_steps(value, step_bytes):
        return dumps_json(value)
    out: list[bytes] = []
    yield from _pieces(value, out, step_bytes, piece_bytes, piece_items)
    return b"".join(out)


def _pieces(value: Any, out: list[bytes], step_bytes: int, piece_bytes: int, piece_items: int) -> Steps[None]:
    """Append `value`'s JSON to `out` in pieces, a step per piece."""
    if not json_in_steps(value, step_bytes):
        out.append(dumps_json(value))
        return
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            out.append(dumps_json(value))  # its error (or orjson's handling of the keys) as in one call
            return
        out.append(b"{")
        for n, (key, item) in enumerate(value.items()):
            out.append(b"," + orjson.dumps(key) + b":" if n else orjson.dumps(key) + b":")
            yield from _pieces(item, out, step_bytes, piece_bytes, piece_items)
        out.append(b"}")
        return
    out.append(b"[")
    if isinstance(value, np.ndarray):
        rows = max(1, piece_bytes // max(1, value.nbytes // len(value)))
        for i in range(0, len(value), rows):
            out.append(dumps_json(value[i:i + rows])[1:-1] if not i else b"," + dumps_json(value[i:i + rows])[1:-1])
            yield
        out.append(b"]")
        return
    i = 0
    while i < len(value):
        if i:
            out.append(b",")
        if isinstance(value[i], np.ndarray) and json_in_steps(value[i], step_bytes):
            yield from _pieces(value[i], out, step_bytes, piece_bytes, piece_items)
            i += 1
            continue
        end = i + 1
        while end < len(value) and end - i < piece_items and not (
                isinstance(value[end], np.ndarray) and json_in_steps(value[end], step_bytes)):
            end += 1
        out.append(dumps_json(list(value[i:end]))[1:-1])
        i = end
        yield
    out.append(b"]")


def dumps_json(value: Any) -> bytes:
    """`value` as JSON bytes; numpy arrays and scalars (and torch tensors) are written as numbers."""
    if isinstance(value, np.ndarray) and not value.dtype.isnative:
        # orjson (3.8) reads the bytes as native order without checking: swap first.
        value = value.astype(value.dtype.newbyteorder("="))
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
    except orjson.JSONEncodeError:
        # orjson serializes only C-contiguous native-endian arrays of common dtypes.
        if isinstance(value, np.ndarray):
            return orjson.dumps(value.tolist())
        raise
