"""pandas IO descriptors: `PandasDataFrame` and `PandasSeries`.

Both read JSON in one of pandas' orients (the layouts of ``DataFrame.to_json``)
and answer in the same orient; a DataFrame also reads and writes CSV
(``text/csv``) and Parquet (``application/vnd.apache.parquet``, where pyarrow
is installed). A body that does not match the orient is HTTP 400 saying what
to send, with an example. pandas is imported when a descriptor is created.

DataFrame orients (``orient=``):

* ``"records"`` (default): ``[{"a": 1, "b": 2}, {"a": 3, "b": 4}]``
* ``"columns"``: ``{"a": [1, 3], "b": [2, 4]}`` (or ``{"a": {"0": 1, "1": 3}, ...}``)
* ``"split"``: ``{"index": [0, 1], "columns": ["a", "b"], "data": [[1, 2], [3, 4]]}``
  (``index`` optional)
* ``"index"``: ``{"x": {"a": 1, "b": 2}, "y": {"a": 3, "b": 4}}`` (row label to row)
* ``"values"``: ``[[1, 2], [3, 4]]`` (columns named by ``columns=``, else 0, 1, ...)

Series orients: ``"records"`` (default) and ``"values"``: ``[1, 2, 3]``;
``"index"``: ``{"x": 1, "y": 2}``; ``"split"``: ``{"index": ["x", "y"], "data":
[1, 2], "name": "n"}`` (``index`` and ``name`` optional).

Index labels written as JSON object keys (orient ``"index"``) become strings.
"""
from __future__ import annotations

import importlib
import importlib.util
import io
from collections.abc import Iterable
from typing import Any

import orjson

from .descriptor import MAX_ONE_CALL_JSON_BYTES, Headers, IODescriptor, check_one_call, dumps_json, media_type
from .errors import InvalidInput, UnsupportedMediaType

__all__ = ["PandasDataFrame", "PandasSeries", "FRAME_ORIENTS", "SERIES_ORIENTS"]

_CT_JSON = "application/json"
_CT_CSV = "text/csv"
_CT_PARQUET = "application/vnd.apache.parquet"
_PARQUET_TYPES = (_CT_PARQUET, "application/x-parquet", "application/octet-stream")

FRAME_ORIENTS = ("records", "columns", "split", "index", "values")
SERIES_ORIENTS = ("records", "values", "index", "split")

_FRAME_EXAMPLES = {
    "records": '[{"a": 1, "b": 2}]',
    "columns": '{"a": [1, 2], "b": [3, 4]}',
    "split": '{"index": [0], "columns": ["a", "b"], "data": [[1, 2]]}',
    "index": '{"row": {"a": 1, "b": 2}}',
    "values": "[[1, 2], [3, 4]]",
}
_SERIES_EXAMPLES = {
    "records": "[1, 2, 3]",
    "values": "[1, 2, 3]",
    "index": '{"x": 1, "y": 2}',
    "split": '{"index": ["x", "y"], "data": [1, 2], "name": "n"}',
}


def _pandas(what: str) -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise ImportError(f"{what} needs pandas: pip install 'shmserve[pandas]'") from exc


def _check_orient(what: str, orient: str, allowed: tuple[str, ...]) -> None:
    if orient not in allowed:
        raise ValueError(f"{what} orient must be one of {list(allowed)}, got {orient!r}")


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc})") from None


def _bad(orient: str, needs: str, example: str) -> InvalidInput:
    return InvalidInput(f'orient "{orient}" needs {needs}, e.g. {example}')


def _split_parts(obj: Any, orient_keys: set[str], required: set[str], example: str) -> dict[str, Any]:
    """The parts of a ``split`` body, checked: an object with `required` keys, nothing outside `orient_keys`."""
    if not isinstance(obj, dict) or not required <= set(obj) or not set(obj) <= orient_keys:
        raise _bad("split", f"a JSON object with keys {sorted(required)} (and optionally "
                            f"{sorted(orient_keys - required)})", example)
    for key in ("index", "columns", "data"):
        if key in obj and not isinstance(obj[key], list):
            raise _bad("split", f'"{key}" as a JSON list', example)
    return obj


def _keyed(mapping: dict[Any, Any]) -> dict[str, Any]:
    """A dict with string keys (JSON objects have only those)."""
    return {str(k): v for k, v in mapping.items()}


def _split_schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"index": {"type": "array"}, **properties},
            "required": [k for k in properties if k != "name"]}


class PandasDataFrame(IODescriptor):
    """A pandas DataFrame from JSON, CSV or Parquet; see the module docstring.

    Args:
        orient: JSON layout: ``"records"``, ``"columns"``, ``"split"``, ``"index"`` or
            ``"values"`` (see the module docstring); responses use it too.
        columns: required column names (HTTP 400 when one is missing); with ``"values"``,
            the names given to the columns.
        dtype: a dtype, or a dict of column to dtype, the columns are cast to.
        default_format: response format when ``Accept`` names none of
            ``text/csv`` / ``application/vnd.apache.parquet``: ``"json"``, ``"csv"`` or ``"parquet"``.
        max_json_bytes: larger JSON bodies get 413 (`shmserve.errors.BodyTooLarge`): pandas builds the
            frame in one call, which holds the event loop (up to ~40 ms per MB); None: no limit but
            the server's body limit. CSV and Parquet bodies are not limited by it.
    """

    def __init__(self, orient: str = "records", columns: Iterable[str] | None = None, dtype: Any = None,
                 default_format: str = "json", max_json_bytes: int | None = MAX_ONE_CALL_JSON_BYTES) -> None:
        _check_orient("PandasDataFrame", orient, FRAME_ORIENTS)
        if default_format not in ("json", "csv", "parquet"):
            raise ValueError(f"PandasDataFrame default_format must be json, csv or parquet, got {default_format!r}")
        self._pd = _pandas("shmserve.io.PandasDataFrame")
        self.orient = orient
        self.columns = list(columns) if columns is not None else None
        self.dtype = dtype
        self.default_format = default_format
        self.max_json_bytes = max_json_bytes
        self.parquet = importlib.util.find_spec("pyarrow") is not None
        if default_format == "parquet" and not self.parquet:
            raise ImportError("PandasDataFrame(default_format='parquet') needs pyarrow: pip install pyarrow")
        self.request_media_types = (_CT_JSON, _CT_CSV) + ((_CT_PARQUET,) if self.parquet else ())
        self.response_media_types = self.request_media_types

    def decode(self, body: bytes, headers: Headers) -> Any:
        """Read JSON (the default), CSV or Parquet into a DataFrame."""
        pd = self._pd
        mt = media_type(headers).decode("latin-1")
        try:
            if not mt or mt == _CT_JSON:
                check_one_call(body, self.max_json_bytes, "PandasDataFrame(...)", ", send it as CSV or Parquet")
                df = self._from_json(_load_json(body))
            elif mt == _CT_CSV:
                df = pd.read_csv(io.BytesIO(body))
            elif mt in _PARQUET_TYPES and self.parquet:
                df = pd.read_parquet(io.BytesIO(body))
            else:
                raise UnsupportedMediaType(f"Content-Type {mt!r} is not read here; send one of "
                                           f"{list(self.request_media_types)}")
        except InvalidInput:
            raise
        except Exception as exc:  # pandas/pyarrow parse errors have many types
            raise InvalidInput(f"the {mt or _CT_JSON} body is not a table this API can read ({exc})") \
                from None
        if self.columns is not None:
            missing = [c for c in self.columns if c not in df.columns]
            if missing:
                raise InvalidInput(f"columns {missing} are missing; this API needs {self.columns}")
        if self.dtype is not None:
            try:
                df = df.astype(self.dtype)
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidInput(f"cannot convert the columns to {self.dtype!r} ({exc})") from None
        return df

    def _from_json(self, obj: Any) -> Any:
        pd, orient, example = self._pd, self.orient, _FRAME_EXAMPLES[self.orient]
        if orient == "records":
            if not (isinstance(obj, list) and all(isinstance(r, dict) for r in obj)):
                raise _bad(orient, "a JSON list of row objects", example)
            return pd.DataFrame.from_records(obj)
        if orient == "columns":
            if not isinstance(obj, dict):
                raise _bad(orient, "a JSON object of columns", example)
            if all(isinstance(v, list) for v in obj.values()):
                return pd.DataFrame(obj)
            return pd.DataFrame.from_dict(obj, orient="columns")
        if orient == "split":
            parts = _split_parts(obj, {"index", "columns", "data"}, {"columns", "data"}, example)
            if not all(isinstance(row, list) for row in parts["data"]):
                raise _bad(orient, '"data" as a list of rows (lists)', example)
            return pd.DataFrame(parts["data"], columns=parts["columns"], index=parts.get("index"))
        if orient == "index":
            if not (isinstance(obj, dict) and all(isinstance(r, dict) for r in obj.values())):
                raise _bad(orient, "a JSON object of row label to row object", example)
            return pd.DataFrame.from_dict(obj, orient="index")
        if not (isinstance(obj, list) and all(isinstance(r, list) for r in obj)):  # values
            raise _bad(orient, "a JSON list of rows (lists)", example)
        if self.columns is not None and any(len(r) != len(self.columns) for r in obj):
            raise InvalidInput(f"every row needs {len(self.columns)} values, one per column of {self.columns}")
        return pd.DataFrame(obj, columns=self.columns)

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write the DataFrame per `accept` (CSV, Parquet) or `default_format`."""
        pd = self._pd
        df = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
        fmt = self.default_format
        if _CT_CSV.encode() in accept:
            fmt = "csv"
        elif self.parquet and _CT_PARQUET.encode() in accept:
            fmt = "parquet"
        if fmt == "csv":
            return _CT_CSV.encode(), df.to_csv(index=False).encode("utf-8"), b""
        if fmt == "parquet":
            out = io.BytesIO()
            df.to_parquet(out, index=False)
            return _CT_PARQUET.encode(), out.getvalue(), b""
        return _CT_JSON.encode(), dumps_json(self._to_json(df)), b""

    def _to_json(self, df: Any) -> Any:
        orient = self.orient
        if orient == "records":
            return df.to_dict(orient="records")
        if orient == "columns":
            return df.to_dict(orient="list")
        if orient == "split":
            return df.to_dict(orient="split")
        if orient == "index":
            return _keyed(df.to_dict(orient="index"))
        return df.to_numpy().tolist()  # values

    def openapi_schema(self) -> dict[str, Any]:
        """The JSON layout of `orient`."""
        row: dict[str, Any] = {"type": "object"}
        if self.columns:
            row["required"] = self.columns
        orient = self.orient
        if orient == "records":
            return {"type": "array", "items": row}
        if orient == "index":
            return {"type": "object", "additionalProperties": row}
        values: dict[str, Any] = {"type": "array"}
        if self.columns:
            values.update(minItems=len(self.columns), maxItems=len(self.columns))
        if orient == "values":
            return {"type": "array", "items": values}
        if orient == "split":
            return _split_schema(columns={"type": "array"}, data={"type": "array", "items": values})
        schema: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "array"}}
        if self.columns:
            schema["required"] = self.columns
        return schema

    def __repr__(self) -> str:
        return f"PandasDataFrame(orient={self.orient!r}, columns={self.columns!r})"


class PandasSeries(IODescriptor):
    """A pandas Series from JSON; see the module docstring.

    Args:
        orient: JSON layout: ``"records"`` / ``"values"`` (a list), ``"index"`` (an
            object of label to value) or ``"split"``; responses use it too.
        dtype: the dtype the values are cast to (HTTP 400 when they cannot be).
        max_json_bytes: larger bodies get 413 (`shmserve.errors.BodyTooLarge`): pandas builds the
            Series in one call; None: no limit but the server's body limit.
    """

    request_media_types = (_CT_JSON,)
    response_media_types = (_CT_JSON,)

    def __init__(self, orient: str = "records", dtype: Any = None,
                 max_json_bytes: int | None = MAX_ONE_CALL_JSON_BYTES) -> None:
        _check_orient("PandasSeries", orient, SERIES_ORIENTS)
        self._pd = _pandas("shmserve.io.PandasSeries")
        self.orient = orient
        self.dtype = dtype
        self.max_json_bytes = max_json_bytes

    def decode(self, body: bytes, headers: Headers) -> Any:
        """Read a JSON body into a Series."""
        mt = media_type(headers).decode("latin-1")
        if mt and mt != _CT_JSON:
            raise UnsupportedMediaType(f"Content-Type {mt!r} is not read here; send {_CT_JSON}")
        check_one_call(body, self.max_json_bytes, "PandasSeries(...)", " or split it over several requests")
        series = self._from_json(_load_json(body))
        if self.dtype is not None:
            try:
                series = series.astype(self.dtype)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"cannot convert the values to {self.dtype!r} ({exc})") from None
        return series

    def _from_json(self, obj: Any) -> Any:
        pd, orient, example = self._pd, self.orient, _SERIES_EXAMPLES[self.orient]
        scalar = (str, int, float, bool, type(None))
        if orient == "index":
            if not (isinstance(obj, dict) and all(isinstance(v, scalar) for v in obj.values())):
                raise _bad(orient, "a JSON object of label to value", example)
            return pd.Series(obj)
        if orient == "split":
            parts = _split_parts(obj, {"index", "data", "name"}, {"data"}, example)
            values, index = parts["data"], parts.get("index")
            if index is not None and len(index) != len(values):
                raise _bad(orient, '"index" and "data" of the same length', example)
            obj = values
        if not (isinstance(obj, list) and all(isinstance(v, scalar) for v in obj)):
            raise _bad(orient, "a JSON list of values (numbers, strings, booleans or null)", example)
        if orient == "split":
            return pd.Series(obj, index=parts.get("index"), name=parts.get("name"))
        return pd.Series(obj)

    def encode(self, value: Any, accept: bytes) -> tuple[bytes, bytes, bytes]:
        """Write the Series (or anything ``pandas.Series()`` takes) as JSON in `orient`."""
        pd = self._pd
        series = value if isinstance(value, pd.Series) else pd.Series(value)
        if self.orient == "index":
            out: Any = _keyed(series.to_dict())
        elif self.orient == "split":
            out = {"name": series.name, "index": series.index.tolist(), "data": series.tolist()}
        else:
            out = series.tolist()
        return _CT_JSON.encode(), dumps_json(out), b""

    def openapi_schema(self) -> dict[str, Any]:
        """The JSON layout of `orient`."""
        if self.orient == "index":
            return {"type": "object", "additionalProperties": {}}
        if self.orient == "split":
            return _split_schema(data={"type": "array"}, name={})
        return {"type": "array", "items": {}}

    def __repr__(self) -> str:
        return f"PandasSeries(orient={self.orient!r})"
