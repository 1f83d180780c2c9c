"""How a batch is assembled from several calls' tensors (no processes)."""
import numpy as np

from shmserve.shm.message import view
from shmserve.shm.wire import TensorMeta
from shmserve.worker.batch import join_inputs as _join


class FakeChannel:
    def __init__(self, size=4096):
        self.arena = memoryview(bytearray(size))
        self.view = self

    @property
    def req_arena(self):
        return self.arena

    def input_view(self, t):
        return view(self.arena, t.offset, t.nbytes, t.dtype, t.shape)


def _put(ch, offset, arr):
    view(ch.arena, offset, arr.nbytes, arr.dtype.str, arr.shape)[...] = arr
    return TensorMeta(offset, arr.nbytes, arr.dtype.str, arr.shape, 0)


def test_adjacent_calls_in_one_arena_become_one_view():
    ch = FakeChannel()
    a, b = np.full((1, 4), 1, np.float32), np.full((2, 4), 2, np.float32)
    metas = [_put(ch, 0, a), _put(ch, 16, b)]
    out = _join([ch, ch], metas, 0)
    assert not out.flags.owndata and out.shape == (3, 4)
    np.testing.assert_array_equal(out, np.concatenate([a, b]))
    out[0, 0] = 9  # a view: writes land in the arena
    assert ch.input_view(metas[0])[0, 0] == 9


def test_gap_between_calls_means_one_gather_copy():
    ch = FakeChannel()
    a = np.full((1, 4), 1, np.float32)
    metas = [_put(ch, 0, a), _put(ch, 64, a)]
    out = _join([ch, ch], metas, 0)
    assert out.flags.owndata and out.shape == (2, 4)


def test_calls_from_two_channels_are_gathered():
    c1, c2 = FakeChannel(), FakeChannel()
    a = np.full((1, 4), 1, np.float32)
    out = _join([c1, c2], [_put(c1, 0, a), _put(c2, 16, a * 2)], 0)
    assert out.flags.owndata
    np.testing.assert_array_equal(out[:, 0], [1, 2])


def test_other_batch_dims_concatenate_along_that_dim():
    ch = FakeChannel()
    a, b = np.ones((2, 1, 3), np.float32), np.zeros((2, 2, 3), np.float32)
    out = _join([ch, ch], [_put(ch, 0, a), _put(ch, a.nbytes, b)], 1)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, 0], 1)
    np.testing.assert_array_equal(out[:, 1:], 0)
