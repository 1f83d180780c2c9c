"""Coverage-guided fuzzing (atheris) of the request decoders, checked against orjson where one exists.

    PYTHONPATH=. python tests/fuzz/atheris_decoders.py -atheris_runs=1000000      # a long session
    PYTHONPATH=. python tests/fuzz/atheris_decoders.py CORPUS_DIR -max_total_time=600

The first input byte picks the decoder and the piece size; the rest is the
body. Any decoder may refuse a body with `InvalidInput` (HTTP 400) or the v2
codec with `InferError` (4xx); any other exception, or a JSON result that
differs from one orjson call on the same bytes, is a crash that libFuzzer
reports with the input. `tests/fuzz/test_atheris.py` runs a short session.
"""
from __future__ import annotations

import sys

import atheris
import numpy as np

with atheris.instrument_imports(include=["shmserve"]):  # shmserve's code only: numpy and asyncio are not ours
    from shmserve.errors import InvalidInput
    from shmserve.http.v2.codec import decode_request
    from shmserve.io import NumpyNdarray
    from shmserve.jsonarray import decode_array
    from shmserve.npy import parse_npy
    from shmserve.oip.errors import InferError
    from tests.fuzz.oracle import check_value_like_orjson

_NDARRAY = NumpyNdarray(dtype="float32")
_RAW_HEADERS = {b"content-type": b"application/octet-stream", b"x-tensor-dtype": b"float32",
                b"x-tensor-shape": b"-1,2"}


def one_input(data: bytes) -> None:
    """Decode `data` with the decoder its first byte names; raise on anything but a clean refusal."""
    if not data:
        return
    pick, body = data[0], data[1:]
    piece = 1 + (pick >> 3)  # 1..32 bytes: every cut the pieces can make
    which = pick & 7
    try:
        if which == 0:
            check_value_like_orjson(body, piece)
        elif which == 1:
            arr = decode_array(body, None, piece)
            assert arr.dtype.kind in "biufc"
        elif which == 2:
            parse_npy(body)
        elif which == 3:
            _NDARRAY.decode(body, _RAW_HEADERS)
        elif which == 4:
            decode_request(body, {}, None, 1 << 20)
        else:
            out = _NDARRAY.decode(body, {b"content-type": b"application/json"})
            assert isinstance(out, np.ndarray) and out.dtype == np.float32
    except (InvalidInput, InferError):
        pass


def main(argv: list[str]) -> None:
    """Run libFuzzer over `one_input` with the command line's libFuzzer flags."""
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
