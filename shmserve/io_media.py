"""IO descriptors for media and tables: `Image`, `File`, `Multipart`; `PandasDataFrame` and `PandasSeries`.

They plug into ``@svc.api(input=..., output=...)`` like `shmserve.io.NumpyNdarray`
and are importable from `shmserve.io` too. Each decodes the request body in
the API worker, answers HTTP 400 (or 415 for a media type it does not read)
with a message saying what to send, and describes itself in ``/docs.json``.

* `Image` — a PIL image from an image body (``image/png``, ``image/jpeg``, ...;
  `allowed_mime_types` restricts them); written back in `mime_type`. A PIL image
  handed to a runner crosses as its pixel array (`shmserve.shm.objects`).
* `File` — any body, as a file-like ``io.BytesIO`` (``.name``, ``.content_type``);
  an API may return bytes, a file-like or a path.
* `Multipart(**descriptors)` — ``multipart/form-data`` (parsed by python-multipart),
  one field per named descriptor, each decoded by it; the API gets a dict.
* `PandasDataFrame` — JSON (`orient` ``"records"``, ``"columns"``, ``"split"``,
  ``"index"`` or ``"values"``), CSV (``text/csv``) and Parquet
  (``application/vnd.apache.parquet``, where pyarrow is installed); `PandasSeries`
  — JSON. Both live in `shmserve.io_pandas` and are importable from here.

Pillow, pandas, pyarrow and python-multipart are imported only when a
descriptor that needs them is created.
"""
from __future__ import annotations

import importlib
import io
import os
import secrets
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from .descriptor import Headers, IODescriptor, media_type
from .errors import InvalidInput, UnsupportedMediaType
from .io_pandas import PandasDataFrame, PandasSeries

__all__ = ["Image", "File", "Multipart", "PandasDataFrame", "PandasSeries"]

_CT_OCTET = "application/octet-stream"


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module.split('.')[0]}: pip install 'shmserve[{extra}]'") from exc


def _binary(media_types: Iterable[str]) -> dict[str, Any]:
    return {mt: {"schema": {"type": "string", "format": "binary"}} for mt in media_types}


class Image(IODescriptor):
    """A PIL image; see the module docstring.

    Args:
        pilmode: convert decoded images to this mode (``"RGB"``, ``"L"``, ...).
        mime_type: the format of responses (default ``image/jpeg`` as in BentoML;
            images whose mode JPEG cannot hold, such as RGBA, are sent as PNG).
        allowed_mime_types: image types a request may carry (default: any PIL reads).
            Both the Content-Type and the decoded format must be among them.
    """

    def __init__(self, pilmode: str | None = None, mime_type: str = "image/jpeg",
                 allowed_mime_types: Iterable[str] | None = None) -> None:
        self._pil = _require("PIL.Image", "image", "shmserve.io.Image")
        self._pil.init()  # load every format plugin: Image.MIME is filled by them
        self.pilmode = pilmode
        self.allowed = tuple(m.lower() for m in allowed_mime_types) if allowed_mime_types else None
        formats = {mime.lower(): fmt for fmt, mime in self._pil.MIME.items()}
        for mt in (mime_type, *(self.allowed or ())):
            if mt.lower() not in formats:
                raise ValueError(f"Image: {mt!r} is not an image type Pillow knows; use e.g. image/png or image/jpeg")
        self.mime_type = mime_type.lower()
        self._formats = formats
        self.request_media_types = self.allowed or ("image/*",)
        self.response_media_types = (self.mime_type,)

    def decode(self, body: bytes, headers: Headers) -> Any:
        """Decode an image body into a fully loaded PIL image."""
        mt = media_type(headers).decode("latin-1")
        if self.allowed and mt and mt not in self.allowed:
            raise UnsupportedMediaType(f"Content-Type {mt!r} is not accepted here; send one of {list(self.allowed)}")
        pil = self._pil
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pil.DecompressionBombWarning)  # a huge image is refused, not decoded
                img = pil.open(io.BytesIO(body))
                img.load()
        except pil.UnidentifiedImageError:
            raise InvalidInput("request body is not an image this API can read; send an image file "
                               f"({', '.join(self.allowed or ('image/png', 'image/jpeg', '...'))})") from None
        except (pil.DecompressionBombWarning, pil.DecompressionBombError) as exc:
            raise InvalidInput(f"the image is too large to decode ({exc})") from None
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
            raise InvalidInput(f"the image could not be decoded ({exc}); send a complete image file") from None
        found = (pil.MIME.get(img.format or "") or "").lower()
        if self.allowed and found not in self.allowed:
            raise InvalidInput(f"the image is {found or img.format!r}; this API accepts {list(self.allowed)}")
        if self.pilmode is not None and img.mode != self.pilmode:
            img = img.convert(self.pilmode)
        return img

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write a PIL image (or a uint8 pixel array) in `mime_type`."""
        pil = self._pil
        img = value if isinstance(value, pil.Image) else pil.fromarray(value)
        mime = self.mime_type
        if mime == "image/jpeg" and img.mode not in ("L", "RGB", "CMYK"):
            mime = "image/png"
        out = io.BytesIO()
        img.save(out, format=self._formats[mime])
        return mime.encode(), out.getvalue(), b""

    def openapi_request_body(self) -> dict[str, Any]:
        """Binary image bodies."""
        return {"required": True, "content": _binary(self.request_media_types)}

    def openapi_responses(self) -> dict[str, Any]:
        """A binary image."""
        return _binary(self.response_media_types)

    def __repr__(self) -> str:
        return f"Image(pilmode={self.pilmode!r}, mime_type={self.mime_type!r}, allowed_mime_types={self.allowed!r})"


class File(IODescriptor):
    """Any body, as a file-like ``io.BytesIO``; see the module docstring.

    Args:
        mime_type: the Content-Type of responses (default ``application/octet-stream``).
    """

    request_media_types = ("*/*",)

    def __init__(self, mime_type: str | None = None) -> None:
        self.mime_type = mime_type or _CT_OCTET
        self.response_media_types = (self.mime_type,)

    def decode(self, body: bytes, headers: Headers) -> io.BytesIO:
        """The body as a BytesIO with ``.content_type`` and ``.name`` (from Content-Disposition, else '')."""
        f = io.BytesIO(body)
        f.content_type = media_type(headers).decode("latin-1") or _CT_OCTET  # type: ignore[attr-defined]
        f.name = _disposition(headers.get(b"content-disposition", b"")).get("filename", "")  # type: ignore[misc]
        return f

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write bytes, a file-like (read to its end) or an ``os.PathLike`` file."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        elif hasattr(value, "read"):
            data = value.read()
            if isinstance(data, str):
                data = data.encode("utf-8")
        elif isinstance(value, os.PathLike):
            with open(value, "rb") as f:
                data = f.read()
        else:
            raise TypeError(f"File() writes bytes, a file-like or an os.PathLike, got {type(value).__name__}")
        return self.mime_type.encode(), data, b""

    def openapi_request_body(self) -> dict[str, Any]:
        """Any binary body."""
        return {"required": True, "content": _binary(self.request_media_types)}

    def openapi_responses(self) -> dict[str, Any]:
        """A binary body."""
        return _binary(self.response_media_types)

    def __repr__(self) -> str:
        return f"File(mime_type={self.mime_type!r})"


def _disposition(raw: bytes) -> dict[str, str]:
    """The parameters of a Content-Disposition header (``name``, ``filename``)."""
    if not raw:
        return {}
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(raw)
    return {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}


class Multipart(IODescriptor):
    """``multipart/form-data`` with one field per descriptor: ``Multipart(image=Image(), meta=JSON())``.

    The API gets (and returns) a dict of field name to value. A missing or
    unknown field, or a field its descriptor cannot read, is HTTP 400.
    """

    request_media_types = ("multipart/form-data",)
    response_media_types = ("multipart/form-data",)

    def __init__(self, **inputs: IODescriptor) -> None:
        if not inputs:
            raise ValueError("Multipart() needs at least one field, e.g. Multipart(image=Image(), meta=JSON())")
        for name, d in inputs.items():
            if not isinstance(d, IODescriptor) or isinstance(d, Multipart):
                raise ValueError(f"Multipart field {name!r} needs an IO descriptor (not Multipart), got {d!r}")
        _require("python_multipart", "multipart", "shmserve.io.Multipart")
        self.inputs = inputs

    def decode(self, body: bytes, headers: Headers) -> dict[str, Any]:
        """Parse the form and decode each field with its descriptor."""
        from python_multipart.multipart import parse_options_header

        ctype, params = parse_options_header(headers.get(b"content-type", b""))
        if ctype != b"multipart/form-data":
            raise UnsupportedMediaType("this API reads multipart/form-data; send the fields "
                                       f"{sorted(self.inputs)} as a form")
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidInput("the multipart/form-data Content-Type has no boundary parameter")
        parts = _parse_parts(body, boundary)
        unknown = sorted(set(parts) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(parts))
        if unknown or missing:
            raise InvalidInput(f"multipart fields: missing {missing}, unknown {unknown}; send exactly "
                               f"{sorted(self.inputs)}")
        out = {}
        for name, descriptor in self.inputs.items():
            part_headers, data = parts[name]
            try:
                out[name] = descriptor.decode(data, part_headers)
            except InvalidInput as exc:
                raise type(exc)(f"multipart field {name!r}: {exc}") from None
        return out

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write a dict of field values as multipart/form-data, each part by its descriptor."""
        if not isinstance(value, Mapping) or set(value) != set(self.inputs):
            raise TypeError(f"Multipart output needs a dict with exactly the fields {sorted(self.inputs)}")
        boundary = secrets.token_hex(16).encode()
        chunks = []
        for name, descriptor in self.inputs.items():
            ctype, data, extra = descriptor.encode(value[name], b"")
            chunks.append(b"--%s\r\ncontent-disposition: form-data; name=\"%s\"\r\ncontent-type: %s\r\n%s\r\n%s\r\n"
                          % (boundary, name.encode(), ctype, extra, data))
        chunks.append(b"--%s--\r\n" % boundary)
        return b"multipart/form-data; boundary=" + boundary, b"".join(chunks), b""

    def openapi_schema(self) -> dict[str, Any]:
        """An object with one property per field."""
        props = {}
        for name, d in self.inputs.items():
            schema = d.openapi_schema()
            props[name] = schema if schema else {"type": "string", "format": "binary"}
        return {"type": "object", "properties": props, "required": sorted(self.inputs)}

    def openapi_request_body(self) -> dict[str, Any]:
        """A form, one part per field."""
        return {"required": True, "content": {"multipart/form-data": {"schema": self.openapi_schema()}}}

    def openapi_responses(self) -> dict[str, Any]:
        """A form, one part per field."""
        return {"multipart/form-data": {"schema": self.openapi_schema()}}

    def __repr__(self) -> str:
        return f"Multipart({', '.join(f'{k}={v!r}' for k, v in self.inputs.items())})"


def _parse_parts(body: bytes, boundary: bytes) -> dict[str, tuple[dict[bytes, bytes], bytes]]:
    """Field name -> (lower-cased part headers, data), parsed with python-multipart."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field: list[bytes] = []
    value: list[bytes] = []

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_header_end() -> None:
        parts[-1][0][b"".join(field).lower()] = b"".join(value)
        field.clear()
        value.clear()

    callbacks: Any = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": lambda data, start, end: field.append(data[start:end]),
        "on_header_value": lambda data, start, end: value.append(data[start:end]),
        "on_header_end": on_header_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"malformed multipart/form-data body ({exc})") from None
    out: dict[str, tuple[dict[bytes, bytes], bytes]] = {}
    for headers, data in parts:
        name = _disposition(headers.get(b"content-disposition", b"")).get("name")
        if not name:
            raise InvalidInput("a multipart part has no Content-Disposition name")
        if name in out:
            raise InvalidInput(f"multipart field {name!r} is sent twice")
        out[name] = (headers, bytes(data))
    return out
