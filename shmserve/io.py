"""IO descriptors: how an HTTP body becomes an API function's argument, and back.

Each API of a `shmserve.Service` names an input and an output descriptor::

    @svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 784), enforce_shape=True),
             output=NumpyNdarray())
    async def predict(x): ...

`NumpyNdarray` accepts three request body formats, chosen by ``Content-Type``:

- ``application/json`` (also the default when no Content-Type is sent): a JSON
  array of numbers, e.g. ``[[0.1, 0.2], [0.3, 0.4]]``.
- ``application/octet-stream``: the raw C-order bytes of the tensor. The dtype
  comes from the ``X-Tensor-Dtype`` header (any numpy dtype name, e.g.
  ``float32`` or ``<f4``), falling back to the descriptor's dtype; the shape
  from ``X-Tensor-Shape`` (comma-separated, e.g. ``1,784``), falling back to the
  descriptor's shape (one ``-1`` is inferred) or to one dimension.
- ``application/x-npy``: a ``.npy`` file (format versions 1 to 3). The header is
  parsed with literals only; pickled (object dtype) arrays are refused.

Responses follow ``Accept``: ``application/x-npy`` gives a ``.npy`` body,
``application/octet-stream`` raw bytes with ``X-Tensor-Dtype`` and
``X-Tensor-Shape`` response headers, anything else JSON. Quality values in
``Accept`` are not weighed; the first matching media type above wins.

Decoding errors raise `shmserve.errors.InvalidInput` (HTTP 400) with a message
that says what to send instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .descriptor import (
    ENCODE_STEP_BYTES,
    MAX_ONE_CALL_JSON_BYTES,
    Headers,
    IODescriptor,
    check_one_call,
    dumps_json,
    dumps_json_steps,
    json_in_steps,
    media_type,
)
from .errors import InvalidInput, UnsupportedMediaType
from .jsonarray import array_steps, native_array
from .jsonscan import PIECE_BYTES, run, run_async
from .jsonvalue import value_steps
from .npy import CACHE_LIMIT as _CACHE_LIMIT
from .npy import MAX_NDIM as _MAX_NDIM
from .npy import check_dtype as _check_dtype
from .npy import check_shape as _check_shape
from .npy import encode_npy, parse_npy
from .npy import parse_dtype as _parse_dtype
from .tensors import to_numpy

__all__ = [
    "IODescriptor",
    "NumpyNdarray",
    "JSON",
    "Text",
    "UnsupportedMediaType",
    "DTYPE_HEADER",
    "SHAPE_HEADER",
    "parse_npy",
    "encode_npy",
]

DTYPE_HEADER = "X-Tensor-Dtype"
SHAPE_HEADER = "X-Tensor-Shape"
_DTYPE_KEY = DTYPE_HEADER.lower().encode()
_SHAPE_KEY = SHAPE_HEADER.lower().encode()

_CT_JSON = b"application/json"
_CT_NPY = b"application/x-npy"
_CT_OCTET = b"application/octet-stream"
_CT_TEXT = b"text/plain; charset=utf-8"


def _parse_shape_header(raw: bytes) -> tuple[int, ...]:
    text = raw.decode("latin-1").strip().strip("()[]")
    try:
        shape = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(f"{SHAPE_HEADER} must be comma-separated integers such as '1,784', got {raw.decode('latin-1')!r}") from None
    if len(shape) > _MAX_NDIM or any(d < 0 for d in shape):
        raise InvalidInput(f"{SHAPE_HEADER} {raw.decode('latin-1')!r}: dimensions must be non-negative, at most {_MAX_NDIM} of them")
    return shape


class NumpyNdarray(IODescriptor):
    """A numpy array, from JSON, raw bytes or ``.npy``; see the module docstring.

    Args:
        dtype: expected dtype. Without `enforce_dtype`, inputs are cast to it.
        shape: expected shape; ``-1`` matches any size in that dimension.
        enforce_dtype: refuse binary inputs of another dtype (HTTP 400), and JSON
            numbers that do not fit the dtype's kind (floats for an int dtype).
        enforce_shape: refuse inputs whose shape does not match `shape` (HTTP 400).
            Without it, an input is reshaped to `shape` when the sizes agree.
    """

    request_media_types = ("application/json", "application/octet-stream", "application/x-npy")
    response_media_types = ("application/json", "application/x-npy", "application/octet-stream")

    def __init__(
        self,
        dtype: Any = None,
        shape: Sequence[int] | None = None,
        enforce_dtype: bool = False,
        enforce_shape: bool = False,
    ) -> None:
        self.dtype: np.dtype | None = _check_dtype(np.dtype(dtype)) if dtype is not None else None
        self.shape: tuple[int, ...] | None = tuple(int(d) for d in shape) if shape is not None else None
        if enforce_dtype and self.dtype is None:
            raise ValueError("NumpyNdarray(enforce_dtype=True) needs a dtype")
        if enforce_shape and self.shape is None:
            raise ValueError("NumpyNdarray(enforce_shape=True) needs a shape")
        if self.shape is not None and sum(1 for d in self.shape if d < 0) > 1 and not enforce_shape:
            raise ValueError("NumpyNdarray shape may hold at most one -1 unless enforce_shape=True")
        self.enforce_dtype = bool(enforce_dtype)
        self.enforce_shape = bool(enforce_shape)
        self._npy_cache: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
        self._dtype_cache: dict[bytes, np.dtype] = {}
        self._shape_cache: dict[bytes, tuple[int, ...]] = {}
        #: (dtype header, shape header) -> (dtype, shape, body bytes) of raw bodies seen to need no cast and no reshape
        self._raw_plans: dict[tuple[bytes | None, bytes | None], tuple[np.dtype, tuple[int, ...], int]] = {}
        # Casting JSON numbers straight to an int/bool dtype would truncate floats silently.
        self._json_infer_first = self.enforce_dtype and self.dtype is not None and self.dtype.kind in "biu"

    # -- decoding -------------------------------------------------------------
    def decode(self, body: bytes, headers: Headers) -> np.ndarray:
        """Decode a JSON, octet-stream or .npy body into an ndarray; see the class docstring."""
        mt = media_type(headers)
        if not mt or mt == _CT_JSON:
            arr = self._from_json(body)
        elif mt == _CT_OCTET:
            return self._from_bytes(body, headers)
        elif mt == _CT_NPY:
            arr = self._convert_dtype(parse_npy(body, self._npy_cache))
        else:
            raise UnsupportedMediaType(
                f"Content-Type {mt.decode('latin-1')!r} is not supported for this API; "
                "send application/json, application/octet-stream or application/x-npy"
            )
        return self._check_shape(arr)

    def decode_in_steps(self, body: bytes, headers: Headers) -> bool:
        """JSON bodies over one piece of `shmserve.jsonarray` are decoded a piece at a time."""
        if len(body) <= PIECE_BYTES:
            return False
        mt = media_type(headers)
        return not mt or mt == _CT_JSON

    async def decode_async(self, body: bytes, headers: Headers) -> np.ndarray:
        """`decode`, JSON bodies a piece at a time with the event loop free in between."""
        if not self.decode_in_steps(body, headers):
            return self.decode(body, headers)
        return self._check_shape(self._json_ndim(await run_async(self._json_steps(body))))

    def _json_steps(self, body: bytes) -> Any:
        if self._json_infer_first:  # read the numbers' own kind first, then cast (no floats into ints)
            return array_steps(body, None, same_kind=self.dtype)
        return array_steps(body, self.dtype)

    def _from_json(self, body: bytes) -> np.ndarray:
        if len(body) <= PIECE_BYTES and not self._json_infer_first:  # `array_steps`' answer without its generator
            arr = native_array(body, self.dtype)
            if arr is not None:
                return self._json_ndim(arr)
        return self._json_ndim(run(self._json_steps(body)))

    @staticmethod
    def _json_ndim(arr: np.ndarray) -> np.ndarray:
        if arr.ndim > _MAX_NDIM:
            raise InvalidInput(f"JSON array has {arr.ndim} dimensions; at most {_MAX_NDIM} are accepted")
        return arr

    def _from_bytes(self, body: bytes, headers: Headers) -> np.ndarray:
        key = raw_dtype, raw_shape = headers.get(_DTYPE_KEY), headers.get(_SHAPE_KEY)
        plan = self._raw_plans.get(key)
        if plan is not None and len(body) == plan[2]:  # these headers checked before (hot path): no parse, no check
            return np.frombuffer(body, plan[0]).reshape(plan[1])
        if raw_dtype is not None:
            dtype = self._dtype_cache.get(raw_dtype)
            if dtype is None:
                dtype = _parse_dtype(raw_dtype.decode("latin-1").strip())
                if len(self._dtype_cache) < _CACHE_LIMIT:
                    self._dtype_cache[raw_dtype] = dtype
        elif self.dtype is not None:
            dtype = self.dtype
        else:
            raise InvalidInput(f"application/octet-stream bodies need a {DTYPE_HEADER} header, e.g. '{DTYPE_HEADER}: float32'")
        itemsize = dtype.itemsize
        if len(body) % itemsize:
            raise InvalidInput(f"body of {len(body)} bytes is not a whole number of {dtype.name} items ({itemsize} bytes each)")
        count = len(body) // itemsize
        if raw_shape is not None:
            shape = self._shape_cache.get(raw_shape)
            if shape is None:
                shape = _parse_shape_header(raw_shape)
                if len(self._shape_cache) < _CACHE_LIMIT:
                    self._shape_cache[raw_shape] = shape
            _check_shape(shape, dtype)
            expected = 1
            for d in shape:
                expected *= d
            if expected != count:
                raise InvalidInput(f"{SHAPE_HEADER} {shape} needs {expected} items of {dtype.name} but the body holds {count}")
        elif self.shape is not None and sum(1 for d in self.shape if d < 0) <= 1:
            shape = self.shape
        else:
            shape = (count,)
        arr = np.frombuffer(body, dtype=dtype, count=count)
        try:
            arr = arr.reshape(shape)
        except ValueError:
            raise InvalidInput(f"body of {count} {dtype.name} items cannot take shape {shape}; send a {SHAPE_HEADER} header") from None
        out = self._check_shape(self._convert_dtype(arr))
        if out is arr and raw_shape is not None and count and len(self._raw_plans) < _CACHE_LIMIT:
            self._raw_plans[key] = (dtype, shape, len(body))  # what it did depends on the headers and length only
        return out

    def from_array(self, arr: np.ndarray) -> np.ndarray:
        """Apply this descriptor's dtype and shape rules to an array decoded elsewhere (the v2 protocol)."""
        return self._check_shape(self._convert_dtype(arr))

    def _convert_dtype(self, arr: np.ndarray) -> np.ndarray:
        want = self.dtype
        if want is None or arr.dtype == want:
            return arr
        if self.enforce_dtype:
            raise InvalidInput(f"expected dtype {want.name}, got {arr.dtype.name}; send {want.name} data")
        if arr.dtype.kind == "c" and want.kind != "c":
            raise InvalidInput(f"complex input ({arr.dtype.name}) cannot become {want.name} without losing its "
                               f"imaginary part; send real {want.name} data")
        if arr.dtype.kind in "SU" and want.kind not in "SU":
            raise InvalidInput(f"string input ({arr.dtype.str}) is not converted to {want.name}; send numbers")
        try:
            return arr.astype(want)
        except (ValueError, TypeError):
            raise InvalidInput(f"cannot convert dtype {arr.dtype.name} to {want.name}") from None

    def _check_shape(self, arr: np.ndarray) -> np.ndarray:
        want = self.shape
        if want is None:
            return arr
        got = arr.shape
        if len(got) == len(want):
            for g, w in zip(got, want, strict=True):
                if w >= 0 and g != w:
                    break
            else:
                return arr
        if self.enforce_shape:
            raise InvalidInput(f"expected shape {_shape_text(want)}, got {_shape_text(got)}")
        try:
            return arr.reshape(want)
        except ValueError:
            return arr

    # -- encoding -------------------------------------------------------------
    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Encode an array per `accept`: ``.npy``, raw bytes with dtype/shape headers, or JSON."""
        arr = value if type(value) is np.ndarray else to_numpy(value)
        if accept:
            if _CT_NPY in accept:
                head, data = encode_npy(arr)
                return _CT_NPY, b"".join((head, data)), b""
            if _CT_OCTET in accept:
                if not arr.flags.c_contiguous:
                    arr = np.ascontiguousarray(arr)
                _check_dtype(arr.dtype)
                extra = b"%s: %s\r\n%s: %s\r\n" % (
                    DTYPE_HEADER.encode(),
                    arr.dtype.str.encode(),
                    SHAPE_HEADER.encode(),
                    ",".join(str(d) for d in arr.shape).encode(),
                )
                return _CT_OCTET, arr.tobytes(), extra
        return _CT_JSON, dumps_json(arr), b""

    def encode_in_steps(self, value: Any, accept: bytes) -> bool:
        """A large ndarray written as JSON is written a block of rows at a time (`dumps_json_steps`)."""
        if not accept and type(value) is np.ndarray:  # the common answer: `json_in_steps`'s rule, without its frame
            return value.ndim > 0 and value.nbytes > ENCODE_STEP_BYTES
        return not (accept and (_CT_NPY in accept or _CT_OCTET in accept)) and json_in_steps(value)

    async def encode_async(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """`encode`, a large JSON answer in steps with the event loop free in between."""
        if not self.encode_in_steps(value, accept):
            return self.encode(value, accept)
        return _CT_JSON, await run_async(dumps_json_steps(value)), b""

    def openapi_schema(self) -> dict[str, Any]:
        """JSON schema: nested arrays of numbers, one level per dimension of `shape`."""
        kind = self.dtype.kind if self.dtype is not None else "f"
        item: dict[str, Any] = {"type": "integer" if kind in "iu" else "boolean" if kind == "b" else "number"}
        if self.dtype is not None:
            item["format"] = self.dtype.name
        if self.shape is None:
            return {"type": "array", "items": {}, "description": "an array of numbers, nested to any depth"}
        schema = item
        for d in reversed(self.shape):
            schema = {"type": "array", "items": schema}
            if d >= 0:
                schema["minItems"] = schema["maxItems"] = d
        return schema

    def __repr__(self) -> str:
        return (
            f"NumpyNdarray(dtype={self.dtype.name if self.dtype is not None else None!r}, shape={self.shape}, "
            f"enforce_dtype={self.enforce_dtype}, enforce_shape={self.enforce_shape})"
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join("*" if d < 0 else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class JSON(IODescriptor):
    """Any JSON value, parsed and written with orjson (numpy values are written as JSON too).

    With ``pydantic_model=`` (a pydantic v2 ``BaseModel`` subclass), the body is
    validated into an instance of it (HTTP 400 with pydantic's errors when it does
    not fit), results that are models are written with ``model_dump(mode="json")``,
    and ``/docs.json`` shows the model's JSON schema.
    """

    request_media_types = ("application/json",)
    response_media_types = ("application/json",)

    def __init__(self, pydantic_model: Any = None, max_json_bytes: int | None = MAX_ONE_CALL_JSON_BYTES) -> None:
        """`max_json_bytes`: with a `pydantic_model`, larger bodies get 413 (`BodyTooLarge`): pydantic validates
        in one call, which holds the event loop (~3 ms per MB); None: no limit but the server's body limit."""
        if pydantic_model is not None and not (isinstance(pydantic_model, type)
                                               and hasattr(pydantic_model, "model_validate")):
            raise ValueError(f"JSON(pydantic_model=...) needs a pydantic v2 BaseModel subclass, got {pydantic_model!r}")
        self.pydantic_model: Any = pydantic_model
        self.max_json_bytes = max_json_bytes

    def decode(self, body: bytes, headers: Headers) -> Any:
        """Parse the body as JSON (validated by `pydantic_model`, if any); an empty body is ``None``."""
        if not body and self.pydantic_model is None:
            return None
        self._check_size(body)
        return self._validate(run(value_steps(body)))

    def decode_in_steps(self, body: bytes, headers: Headers) -> bool:
        """Bodies over one piece of `shmserve.jsonvalue` are parsed a piece at a time."""
        return len(body) > PIECE_BYTES

    async def decode_async(self, body: bytes, headers: Headers) -> Any:
        """`decode` with the event loop free between pieces (pydantic validation is one call: see `max_json_bytes`)."""
        self._check_size(body)
        return self._validate(await run_async(value_steps(body)))

    def _check_size(self, body: bytes) -> None:
        if self.pydantic_model is not None:
            check_one_call(body, self.max_json_bytes, f"JSON(pydantic_model={self.pydantic_model.__name__})",
                           " or split it over several requests")

    def _validate(self, obj: Any) -> Any:
        if self.pydantic_model is None:
            return obj
        from pydantic import ValidationError

        try:
            return self.pydantic_model.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
            raise InvalidInput(f"request body does not match {self.pydantic_model.__name__}: {problems}") from None

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write `value` as JSON (pydantic models through ``model_dump(mode="json")``)."""
        if hasattr(value, "model_dump") and hasattr(type(value), "model_validate"):
            value = value.model_dump(mode="json")
        return _CT_JSON, dumps_json(value), b""

    def encode_in_steps(self, value: Any, accept: bytes) -> bool:
        """Large arrays and lists (also inside a dict or list) are written in steps (`dumps_json_steps`)."""
        return json_in_steps(value)

    async def encode_async(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """`encode`, a large value in steps with the event loop free in between."""
        return _CT_JSON, await run_async(dumps_json_steps(value)), b""

    def openapi_schema(self) -> dict[str, Any]:
        """Any JSON value, or the pydantic model's JSON schema."""
        if self.pydantic_model is not None:
            return dict(self.pydantic_model.model_json_schema())
        return {}

    def __repr__(self) -> str:
        return f"JSON(pydantic_model={self.pydantic_model.__name__})" if self.pydantic_model is not None else "JSON()"


class Text(IODescriptor):
    """A UTF-8 string."""

    request_media_types = ("text/plain",)
    response_media_types = ("text/plain",)

    def decode(self, body: bytes, headers: Headers) -> str:
        """Decode the body as UTF-8."""
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("request body is not valid UTF-8 text") from None

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write `value` (a str, or anything, through str()) as UTF-8 text."""
        text = value if isinstance(value, str) else str(value)
        return _CT_TEXT, text.encode("utf-8"), b""

    def openapi_schema(self) -> dict[str, Any]:
        """A string."""
        return {"type": "string"}

    def openapi_request_body(self) -> dict[str, Any]:
        """Plain text."""
        return {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}

    def openapi_responses(self) -> dict[str, Any]:
        """Plain text."""
        return {"text/plain": {"schema": {"type": "string"}}}

    def __repr__(self) -> str:
        return "Text()"


#: shmserve.io.Image, File, Multipart, PandasDataFrame and PandasSeries (not in __all__: star-imports stay dependency-free)
_MEDIA = frozenset({"Image", "File", "Multipart", "PandasDataFrame", "PandasSeries"})


def __getattr__(name: str) -> Any:
    # The media descriptors live in shmserve.io_media; importing them here lazily keeps
    # `shmserve.io` free of their optional dependencies until one is used.
    if name in _MEDIA:
        from . import io_media

        return getattr(io_media, name)
    raise AttributeError(f"module 'shmserve.io' has no attribute {name!r}")
