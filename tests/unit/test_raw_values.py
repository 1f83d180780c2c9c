"""bytes and PIL images cross as raw buffers: encode -> arena arrays -> decode, in process."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shmserve.errors import InvalidInput
from shmserve.shm.message import KIND_RAW, decode_call, decode_result, encode_call, encode_result


def _through(tensors):
    """What the other side sees: copies standing in for arena views."""
    return [t[0].copy() for t in tensors]


def test_bytes_argument_is_a_raw_buffer_not_json():
    payload = bytes(range(256)) * 4096  # 1 MiB
    tensors, meta = encode_call((payload,), {"tag": b"ab"})
    assert len(meta) < 100  # the data is not in the metadata
    assert [t[1] for t in tensors] == [KIND_RAW, KIND_RAW]
    assert np.shares_memory(tensors[0][0], np.frombuffer(payload, np.uint8))  # no copy before the arena
    args, kwargs = decode_call(_through(tensors), meta)
    assert args == [payload] and kwargs == {"tag": b"ab"} and type(args[0]) is bytes


def test_bytearray_and_memoryview_arrive_as_bytes():
    tensors, meta = encode_call((bytearray(b"xy"), memoryview(b"abcd")[::2]), {})
    assert decode_call(_through(tensors), meta)[0] == [b"xy", b"ac"]


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16",
                                  "I;16B", "LA", "RGBX"])
def test_pil_image_roundtrip_keeps_mode_size_and_pixels(mode):
    rng = np.random.default_rng(0)
    img = Image.new(mode, (5, 3))
    bands = len(img.getbands())
    values = rng.integers(0, 2, 15) * 255 if mode == "1" else rng.integers(0, 200, (15, bands))
    img.putdata([int(v) for v in values] if bands == 1 and mode == "1" else
                [int(v[0]) for v in values] if bands == 1 else [tuple(int(c) for c in v) for v in values])
    tensors, meta = encode_call((img,), {})
    assert b'"m"' in meta and tensors[0][1] == KIND_RAW
    (back,), _ = decode_call(_through(tensors), meta)
    assert back.mode == mode and back.size == img.size
    np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


def test_result_image_and_bytes_in_a_tuple():
    img = Image.new("RGB", (4, 2), (1, 2, 3))
    tensors, meta = encode_result((img, b"raw", np.arange(3), "text"))
    out = decode_result(_through(tensors), meta)
    assert out[1] == b"raw" and out[3] == "text" and list(out[2]) == [0, 1, 2]
    assert out[0].mode == "RGB" and out[0].getpixel((3, 1)) == (1, 2, 3)


def test_palette_image_is_refused_with_the_fix():
    with pytest.raises(InvalidInput, match=r"convert\('RGB'\)"):
        encode_call((Image.new("P", (2, 2)),), {})


def test_refusal_says_which_types_cross():
    with pytest.raises(InvalidInput, match="bytes, PIL images"):
        encode_call((object(),), {})
    with pytest.raises(InvalidInput, match="top-level"):
        encode_call(([b"nested"],), {})


def test_dataframe_columns_cross_as_arrays():
    import pandas as pd

    df = pd.DataFrame({"a": np.arange(3, dtype=np.int32), "b": [0.5, 1.5, 2.5], "name": ["x", "y", "z"],
                       "ok": [True, False, True]})
    tensors, meta = encode_call((df,), {})
    assert [t[0].dtype.name for t in tensors] == ["int32", "float64", "bool"]  # numeric columns: arrays
    assert b"0.5" not in meta and b'"x"' in meta  # strings in the metadata, numbers not
    (back,), _ = decode_call(_through(tensors), meta)
    pd.testing.assert_frame_equal(back, df)
    indexed = df.set_index("name")
    tensors, meta = encode_result(indexed)
    pd.testing.assert_frame_equal(decode_result(_through(tensors), meta), indexed, check_names=False)


def test_dataframe_with_duplicate_columns_is_refused():
    import pandas as pd

    with pytest.raises(InvalidInput, match="duplicate column"):
        encode_call((pd.DataFrame([[1, 2]], columns=["a", "a"]),), {})


def test_dataframe_columns_of_every_transport_dtype_cross_as_arrays():
    import pandas as pd

    from shmserve.tensors import TRANSPORT

    # the column rule is the transport's (complex columns were refused: not JSON values, not "numeric")
    df = pd.DataFrame({"c": np.array([1 + 2j, 3 - 1j]), "h": np.array([1, 2], np.float16), "u": np.array([1, 2], np.uint8)})
    tensors, meta = encode_call((df,), {})
    assert sorted(t[0].dtype.kind for t in tensors) == sorted("cfu")
    assert {t[0].dtype.kind for t in tensors} <= TRANSPORT.dtype_kinds
    (back,), _ = decode_call(_through(tensors), meta)
    pd.testing.assert_frame_equal(back, df)
