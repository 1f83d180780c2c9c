"""pandas IO descriptors: every orient read and written, refusals, and the OpenAPI shapes."""
from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from shmserve.errors import InvalidInput
from shmserve.io import UnsupportedMediaType
from shmserve.io_pandas import FRAME_ORIENTS, PandasDataFrame, PandasSeries

JSON_HEADERS = {b"content-type": b"application/json"}
FRAME = pd.DataFrame({"a": [1, 3], "b": [2.5, 4.5]}, index=["x", "y"])
BODIES = {
    "records": b'[{"a": 1, "b": 2.5}, {"a": 3, "b": 4.5}]',
    "columns": b'{"a": [1, 3], "b": [2.5, 4.5]}',
    "split": b'{"index": ["x", "y"], "columns": ["a", "b"], "data": [[1, 2.5], [3, 4.5]]}',
    "index": b'{"x": {"a": 1, "b": 2.5}, "y": {"a": 3, "b": 4.5}}',
    "values": b"[[1, 2.5], [3, 4.5]]",
}


def decode(desc, body: bytes):
    return desc.decode(body, JSON_HEADERS)


@pytest.mark.parametrize("orient", FRAME_ORIENTS)
def test_each_frame_orient_reads_what_pandas_writes_and_writes_it_back(orient: str) -> None:
    desc = PandasDataFrame(orient=orient, columns=["a", "b"])
    df = decode(desc, BODIES[orient])
    assert df["a"].tolist() == [1, 3] and df["b"].tolist() == [2.5, 4.5]
    if orient in ("split", "index"):  # the orients that carry row labels keep them
        assert df.index.tolist() == ["x", "y"]
    ctype, body, _ = desc.encode(df, b"")
    assert ctype == b"application/json" and orjson.loads(body) == orjson.loads(BODIES[orient])
    # what pandas itself writes in that orient reads back to the same frame
    theirs = decode(desc, FRAME.to_json(orient=orient).encode())
    assert theirs["b"].tolist() == [2.5, 4.5]


@pytest.mark.parametrize("orient, body, says", [
    ("split", b'{"columns": ["a"]}', "keys ['columns', 'data']"),
    ("split", b'{"columns": ["a"], "data": [[1]], "extra": 1}', "keys ['columns', 'data']"),
    ("split", b'{"columns": ["a"], "data": [1, 2]}', "list of rows"),
    ("split", b'{"columns": "a", "data": [[1]]}', '"columns" as a JSON list'),
    ("index", b'{"x": [1, 2]}', "row label to row object"),
    ("index", b"[1]", "row label to row object"),
    ("values", b'[{"a": 1}]', "list of rows (lists)"),
    ("values", b"[[1, 2, 3]]", "one per column of ['a', 'b']"),
    ("records", b"[[1, 2]]", "list of row objects"),
])
def test_bad_frame_bodies_say_what_to_send(orient: str, body: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match="e.g.|one per column") as info:
        decode(PandasDataFrame(orient=orient, columns=["a", "b"]), body)
    assert says in str(info.value)


def test_values_without_columns_numbers_them() -> None:
    df = decode(PandasDataFrame(orient="values"), b"[[1, 2]]")
    assert df.columns.tolist() == [0, 1]


def test_unknown_orients_are_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="one of"):
        PandasDataFrame(orient="table")
    with pytest.raises(ValueError, match="one of"):
        PandasSeries(orient="columns")


@pytest.mark.parametrize("orient, body, index", [
    ("records", b"[1, 2, 3]", [0, 1, 2]),
    ("values", b"[1, 2, 3]", [0, 1, 2]),
    ("index", b'{"x": 1, "y": 2, "z": 3}', ["x", "y", "z"]),
    ("split", b'{"index": ["x", "y", "z"], "data": [1, 2, 3], "name": "n"}', ["x", "y", "z"]),
])
def test_series_orients_round_trip(orient: str, body: bytes, index: list) -> None:
    desc = PandasSeries(orient=orient, dtype="float64")
    s = decode(desc, body)
    assert isinstance(s, pd.Series) and s.dtype == np.float64 and s.tolist() == [1.0, 2.0, 3.0]
    assert s.index.tolist() == index
    _, out, _ = desc.encode(s, b"")
    assert orjson.loads(out) == orjson.loads(body)  # (floats now: 1.0 == 1)


def test_series_refusals() -> None:
    with pytest.raises(InvalidInput, match="list of values"):
        decode(PandasSeries(), b'[{"a": 1}]')
    with pytest.raises(InvalidInput, match="label to value"):
        decode(PandasSeries(orient="index"), b"[1]")
    with pytest.raises(InvalidInput, match="same length"):
        decode(PandasSeries(orient="split"), b'{"index": ["x"], "data": [1, 2]}')
    with pytest.raises(InvalidInput, match="cannot convert"):
        decode(PandasSeries(dtype="int64"), b'["x"]')
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode(PandasSeries(), b"[1,")
    with pytest.raises(UnsupportedMediaType):
        PandasSeries().decode(b"1\n2\n", {b"content-type": b"text/csv"})


def test_series_encodes_what_an_api_returns() -> None:
    _, body, _ = PandasSeries().encode(np.array([1, 2]), b"")
    assert orjson.loads(body) == [1, 2]
    _, body, _ = PandasSeries(orient="index").encode(pd.Series([5], index=[7]), b"")
    assert orjson.loads(body) == {"7": 5}  # JSON object keys are strings


def test_openapi_shapes_follow_the_orient() -> None:
    cols = ["a", "b"]
    assert PandasDataFrame(orient="split", columns=cols).openapi_schema() == {
        "type": "object",
        "properties": {"index": {"type": "array"}, "columns": {"type": "array"},
                       "data": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}}},
        "required": ["columns", "data"]}
    assert PandasDataFrame(orient="index", columns=cols).openapi_schema() == {
        "type": "object", "additionalProperties": {"type": "object", "required": cols}}
    assert PandasDataFrame(orient="values", columns=cols).openapi_schema() == {
        "type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}}
    assert PandasDataFrame(orient="values").openapi_schema() == {"type": "array", "items": {"type": "array"}}
    assert PandasSeries().openapi_schema() == {"type": "array", "items": {}}
    assert PandasSeries(orient="index").openapi_schema() == {"type": "object", "additionalProperties": {}}
    assert PandasSeries(orient="split").openapi_schema() == {
        "type": "object", "properties": {"index": {"type": "array"}, "data": {"type": "array"}, "name": {}},
        "required": ["data"]}


def test_docs_json_carries_the_orient_shapes() -> None:
    import shmserve
    from shmserve.http.openapi import build_openapi

    svc = shmserve.Service("tables")

    @svc.api(input=PandasDataFrame(orient="split", columns=["a"]), output=PandasSeries(orient="index"))
    def first(df):
        return df["a"]

    post = build_openapi(svc, "t")["paths"]["/first"]["post"]
    request = post["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["columns", "data"] and "text/csv" in post["requestBody"]["content"]
    response = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert response == {"type": "object", "additionalProperties": {}}


def test_the_pandas_descriptors_are_reachable_from_shmserve_io() -> None:
    import shmserve.io

    assert shmserve.io.PandasSeries is PandasSeries
    assert shmserve.io.PandasDataFrame is PandasDataFrame
