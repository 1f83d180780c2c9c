"""Joining calls into one batch and splitting its result back, along the method's batch dim.

A batch of calls from one channel whose input blocks touch, joined along dim 0, is one view of
the request arena (no copy); any other batch is joined by `shmserve.tensors.join` (one copy).
The result is split along ``output_dim`` into views, one per call, in the calls' order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..shm.message import view
from ..shm.wire import TensorMeta
from ..tensors import is_tensor, join, split
from .channel import WorkerChannel

__all__ = ["join_inputs", "split_result"]


def join_inputs(channels: list[WorkerChannel], metas: list[TensorMeta], dim: int) -> np.ndarray:
    """One array for several calls' tensors: a view when they are adjacent in one arena, else one copy."""
    ch0, t0 = channels[0], metas[0]
    if dim == 0 and all(c is ch0 for c in channels):
        # a tensor in a client's object (segment) is not in this arena: joined by a copy below
        contiguous = all(not t.segment for t in metas) and all(
            metas[i].offset + metas[i].nbytes == metas[i + 1].offset for i in range(len(metas) - 1))
        if contiguous:
            rows = sum(t.shape[0] for t in metas)
            nbytes = sum(t.nbytes for t in metas)
            return view(ch0.view.req_arena, t0.offset, nbytes, t0.dtype, (rows,) + t0.shape[1:])
    return join([c.input_view(t) for c, t in zip(channels, metas)], dim)  # type: ignore[no-any-return]


def split_result(name: str, out: Any, sizes: list[int], dim: int) -> list[Any]:
    """The result `out` of method `name` for a batch of calls of `sizes` items, cut along `dim`
    into one part per call; ValueError when `out` is not a batch of ``sum(sizes)`` items."""
    total = sum(sizes)
    bounds = np.cumsum([0] + sizes)
    n = len(sizes)

    def cut(x: Any) -> list[Any]:
        if is_tensor(x):
            return split(x, sizes, dim, what=f"the result of method {name!r}")
        if isinstance(x, (tuple, list)) and any(is_tensor(v) for v in x):
            cols = [cut(v) for v in x]
            return [type(x)(c[i] for c in cols) for i in range(n)]
        if isinstance(x, (list, tuple)) and len(x) == total:
            return [list(x[bounds[i]:bounds[i + 1]]) for i in range(n)]
        raise ValueError(
            f"method {name!r} is batchable but returned {type(x).__name__}; return a tensor (or a "
            f"tuple of tensors, or a list of {total} items) along batch_dim"
        )

    return cut(out)
