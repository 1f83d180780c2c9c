"""`IODescriptor`, the base of every IO descriptor, and what all descriptors share.

`shmserve.io` (arrays, JSON, text) and `shmserve.io_media` (images, files,
multipart, tables) both build on this module, so neither imports the other's
internals.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .tensors import is_tensor, to_list

__all__ = ["Headers", "IODescriptor", "dumps_json", "media_type"]

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
    semi = ct.find(b";")
    if semi >= 0:
        ct = ct[:semi]
    return ct.strip().lower()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if is_tensor(value):  # orjson writes C-contiguous native numpy arrays itself; these are the others
        return to_list(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


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
