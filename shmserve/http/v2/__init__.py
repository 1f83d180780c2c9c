"""The Open Inference Protocol (KServe v2) over REST, next to the native routes.

`routes.V2Routes` answers every path under ``/v2``; `codec` reads and writes
inference bodies (JSON tensors and the binary tensor data extension).
"""
from .routes import V2Routes

__all__ = ["V2Routes"]
