"""Values that are not tensors but cross as raw buffers: ``bytes``, PIL images, DataFrames.

Both travel in the arena like a tensor (one copy in, no JSON, no pickle), with
header kind `KIND_RAW` so that the worker never joins them into a batch. The
call or result metadata says how to rebuild them (`shmserve.shm.message`):

* ``bytes`` / ``bytearray`` / ``memoryview`` -> a uint8 vector; rebuilt as ``bytes``.
* a ``PIL.Image.Image`` -> its pixel array (``numpy.asarray(img)``) plus its mode;
  rebuilt as an image of that mode and size. Palette images (``P``, ``PA``)
  are refused: their palette is not in the pixel array.
* a ``pandas.DataFrame`` -> one array per column of a dtype the transport carries
  (`shmserve.tensors.TRANSPORT`: numbers, complex and bools); other columns
  (strings, mixed objects) and a non-default index travel as JSON values in
  the metadata. Rebuilt with the same column order, names and dtypes.

PIL and pandas are imported only to rebuild a value, never to recognise one.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..tensors import TRANSPORT

#: TensorHeader kind of a raw buffer (see `shmserve.shm.wire` and `shmserve.tensors`).
KIND_RAW = 2

#: What crosses the transport, for error messages.
CROSSES = ("numpy arrays, torch tensors (CPU, or CUDA through the GPU transport), bytes, PIL images, pandas DataFrames, "
           "and JSON values (None, bool, int, float, str, and lists/dicts of them)")

_PALETTE_MODES = frozenset({"P", "PA"})


def is_bytes(x: Any) -> bool:
    return isinstance(x, (bytes, bytearray, memoryview))


def is_pil_image(x: Any) -> bool:
    """A PIL image, without importing PIL when it is not loaded."""
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(x, image.Image)


def is_dataframe(x: Any) -> bool:
    """A pandas DataFrame, without importing pandas when it is not loaded."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(x, pandas.DataFrame)


def is_raw(x: Any) -> bool:
    """A value that crosses as raw buffers."""
    return is_bytes(x) or is_pil_image(x) or is_dataframe(x)


def bytes_array(x: Any) -> np.ndarray:
    """A uint8 view of a bytes-like value (no copy)."""
    view = memoryview(x)
    if not view.contiguous:
        view = memoryview(view.tobytes())
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def image_array(img: Any, where: str) -> tuple[np.ndarray, str]:
    """The pixel array and mode of a PIL image."""
    mode = str(img.mode)
    if mode in _PALETTE_MODES:
        raise InvalidInput(f"{where}: a PIL image of mode {mode!r} (palette) cannot cross the transport; "
                           "convert it first, e.g. img.convert('RGB')")
    return np.asarray(img), mode


def image_from_array(arr: np.ndarray, mode: str) -> Any:
    """A PIL image of `mode` holding a copy of the pixels in `arr` (which may be an arena view)."""
    from PIL import Image

    if mode == "1":  # one bool per pixel in the array; packed bits in frombytes' raw form
        return Image.fromarray(np.array(arr, dtype=bool))
    height, width = arr.shape[:2]
    data = np.ascontiguousarray(arr, dtype=">u2" if mode == "I;16B" else None).tobytes()
    try:
        return Image.frombytes(mode, (width, height), data)
    except ValueError as exc:
        raise InvalidInput(f"pixel array of shape {arr.shape} and dtype {arr.dtype} is not a {mode!r} image ({exc})") \
            from None


def frame_columns(df: Any, where: str) -> tuple[list[tuple[Any, np.ndarray | None, Any]], Any]:
    """``[(name, array or None, JSON values or None), ...]`` and the index as JSON values (None: a RangeIndex
    from 0). Numeric and bool columns become arrays; the rest must be JSON values."""
    names = list(df.columns)
    if len(set(map(repr, names))) != len(names):
        raise InvalidInput(f"{where}: a DataFrame with duplicate column names cannot cross the transport")
    cols: list[tuple[Any, np.ndarray | None, Any]] = []
    for i, name in enumerate(names):
        col = df.iloc[:, i]
        if isinstance(col.dtype, np.dtype) and col.dtype.kind in TRANSPORT.dtype_kinds:
            cols.append((name, col.to_numpy(), None))
        else:
            cols.append((name, None, col.tolist()))
    index = df.index
    plain = type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1
    return cols, None if plain else index.tolist()


def frame_from_columns(names: list[Any], columns: list[Any], index: Any) -> Any:
    """Rebuild a DataFrame: `columns` are arrays (copied out of the arena) or lists of values."""
    import pandas as pd

    data = {name: (np.array(col) if isinstance(col, np.ndarray) else col) for name, col in zip(names, columns)}
    return pd.DataFrame(data, index=index, columns=names)
