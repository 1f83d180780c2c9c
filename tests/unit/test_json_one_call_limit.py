"""Descriptors that read JSON in one call they cannot split refuse bodies over `max_json_bytes` with 413."""
from __future__ import annotations

import asyncio

import orjson
import pydantic
import pytest

from shmserve.descriptor import MAX_ONE_CALL_JSON_BYTES
from shmserve.errors import BodyTooLarge, InvalidInput
from shmserve.io import JSON

HEADERS = {b"content-type": b"application/json"}


class Rows(pydantic.BaseModel):
    x: list[list[float]]


def _rows(nbytes: int) -> bytes:
    row = [0.125] * 100
    n = max(1, nbytes // len(orjson.dumps(row)))
    return orjson.dumps({"x": [row] * n})


def test_a_pydantic_body_over_the_limit_gets_413_before_it_is_parsed() -> None:
    desc = JSON(pydantic_model=Rows, max_json_bytes=10_000)
    small, big = _rows(5_000), _rows(20_000)
    assert len(small) <= 10_000 < len(big)
    assert isinstance(desc.decode(small, HEADERS), Rows)
    with pytest.raises(BodyTooLarge) as err:
        desc.decode(big, HEADERS)
    assert err.value.http_status == 413 and "max_json_bytes" in str(err.value) and str(len(big)) in str(err.value)
    with pytest.raises(BodyTooLarge):
        asyncio.run(desc.decode_async(big, HEADERS))


def test_the_default_limit_and_none() -> None:
    big = _rows(MAX_ONE_CALL_JSON_BYTES + 1000)
    assert JSON(pydantic_model=Rows).max_json_bytes == MAX_ONE_CALL_JSON_BYTES
    with pytest.raises(BodyTooLarge):
        asyncio.run(JSON(pydantic_model=Rows).decode_async(big, HEADERS))
    assert isinstance(asyncio.run(JSON(pydantic_model=Rows, max_json_bytes=None).decode_async(big, HEADERS)), Rows)
    assert asyncio.run(JSON().decode_async(big, HEADERS))["x"][0][0] == 0.125  # no model: parsed in steps, no limit


def test_body_too_large_is_bad_input_with_its_own_status() -> None:
    assert issubclass(BodyTooLarge, InvalidInput) and BodyTooLarge.http_status == 413


pd = pytest.importorskip("pandas")


@pytest.mark.parametrize("orient", ["records", "values"])
def test_a_pandas_json_body_over_the_limit_gets_413_and_csv_is_not_limited(orient: str) -> None:
    from shmserve.io_pandas import PandasDataFrame, PandasSeries

    frame = pd.DataFrame({"a": range(2000), "b": [0.5] * 2000})
    body = frame.to_json(orient=orient).encode()
    desc = PandasDataFrame(orient=orient, max_json_bytes=len(body) - 1)
    with pytest.raises(BodyTooLarge) as err:
        desc.decode(body, HEADERS)
    assert "CSV" in str(err.value)
    assert len(PandasDataFrame(orient=orient, max_json_bytes=len(body)).decode(body, HEADERS)) == 2000
    csv = frame.to_csv(index=False).encode()
    assert len(PandasDataFrame(max_json_bytes=10).decode(csv, {b"content-type": b"text/csv"})) == 2000
    series = orjson.dumps(list(range(2000)))
    with pytest.raises(BodyTooLarge):
        PandasSeries(max_json_bytes=100).decode(series, HEADERS)
    assert len(PandasSeries(max_json_bytes=None).decode(series, HEADERS)) == 2000
