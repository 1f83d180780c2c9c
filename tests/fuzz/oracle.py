"""The differential check shared by the property tests and the atheris target."""
from __future__ import annotations

import orjson

from shmserve import jsonvalue
from shmserve.errors import InvalidInput


def check_value_like_orjson(body: bytes, piece: int) -> None:
    """`jsonvalue.loads(body, piece)` gives what one orjson call gives, or a 400 exactly where orjson refuses."""
    try:
        want: object = ("ok", orjson.loads(body))
    except orjson.JSONDecodeError:
        want = None
    try:
        got = jsonvalue.loads(body, piece)
    except InvalidInput:
        assert want is None, (body, want)
        return
    assert want == ("ok", got), (body, got, want)
