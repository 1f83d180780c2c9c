"""``bentoml.io``: the IO descriptors, from `shmserve.io`."""
from __future__ import annotations

from ...io import JSON, IODescriptor, NumpyNdarray, Text
from ...io_media import File, Image, Multipart, PandasDataFrame, PandasSeries

__all__ = ["IODescriptor", "NumpyNdarray", "JSON", "Text", "Image", "File", "Multipart", "PandasDataFrame",
           "PandasSeries"]
