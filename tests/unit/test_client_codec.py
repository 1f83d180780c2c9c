"""`Codec.decode`: a small result is copied out of the link's result block, and the block goes back
to the worker whatever happens while copying."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shmserve.client import Codec
from shmserve.shm.wire import BLOCK_FIELDS, BLOCK_FREE, U64, TensorMeta
from shmserve.tensors import KIND_NUMPY

_STATE = BLOCK_FIELDS["state"][0]
_BLOCK_OFF, _BLOCK_LEN = 64, 256
_IN_USE = 7  # any state but BLOCK_FREE


def _link(payload: np.ndarray) -> SimpleNamespace:
    arena = memoryview(bytearray(1024))
    U64.pack_into(arena, _BLOCK_OFF + _STATE, _IN_USE)
    arena[128:128 + payload.nbytes] = payload.tobytes()
    return SimpleNamespace(result_arena=arena, _extra=None)


def _state(link: SimpleNamespace) -> int:
    return U64.unpack_from(link.result_arena, _BLOCK_OFF + _STATE)[0]


def test_a_small_result_is_copied_out_and_its_block_freed() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    link = _link(x)
    meta = TensorMeta(128, x.nbytes, "<f4", (2, 3), KIND_NUMPY)
    out = Codec().decode(link, [meta], b"", _BLOCK_OFF, _BLOCK_LEN)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert _state(link) == BLOCK_FREE
    link.result_arena[128:128 + x.nbytes] = bytes(x.nbytes)  # the worker reuses the freed block
    np.testing.assert_array_equal(out, x)  # a copy, not a view of the block


def test_a_result_that_cannot_be_rebuilt_still_gives_its_block_back() -> None:
    link = _link(np.zeros(4, np.float32))
    past_the_end = TensorMeta(1000, 400, "<f4", (100,), KIND_NUMPY)  # its bytes lie past the arena
    with pytest.raises((TypeError, ValueError)):
        Codec().decode(link, [past_the_end], b"", _BLOCK_OFF, _BLOCK_LEN)  # type: ignore[arg-type]
    assert _state(link) == BLOCK_FREE  # kept in use before: the block was lost to the worker until the link reset
