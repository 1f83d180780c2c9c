"""Extra segments (`shmserve.shm.extra`): the worker's checks of a tensor that names a client object."""
from __future__ import annotations

import contextlib
import mmap
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from shmserve.shm import extra, wire
from shmserve.shm.wire import TensorMeta


@contextlib.contextmanager
def client_object(size: int) -> Iterator[tuple[str, mmap.mmap]]:
    """A private shared-memory object of `size` bytes, as a client makes one: its name and a mapping."""
    name = "/v2test_" + uuid.uuid4().hex[:12]
    fd = os.open(os.path.join(extra.SHM_DIR, name[1:]), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    try:
        yield name, m
    finally:
        m.close()
        os.unlink(os.path.join(extra.SHM_DIR, name[1:]))


@pytest.fixture
def obj() -> Iterator[tuple[str, mmap.mmap]]:
    with client_object(4096) as made:
        yield made


def announced(name: str, gen: int = 7, size: int = 4096) -> memoryview:
    header = memoryview(bytearray(wire.HEADER_SIZE))
    wire.EXTRA.pack_into(header, wire.EXTRA_OFF, gen, size, name.encode())
    return header


def test_a_tensor_in_an_announced_object_is_a_view_of_it(obj) -> None:
    name, m = obj
    np.frombuffer(m, np.float32)[4:8] = [1, 2, 3, 4]
    maps = extra.ExtraMappings()
    got = maps.view(announced(name), TensorMeta(16, 16, "<f4", (2, 2), 0, 1, 7))
    assert got.tolist() == [[1, 2], [3, 4]]
    m[16:20] = np.float32(9).tobytes()
    assert got[0, 0] == 9  # the object itself, not a copy
    del got
    maps.close()


@pytest.mark.parametrize("meta, why", [
    (TensorMeta(4096 - 8, 16, "<f4", (4,), 0, 1, 7), "falls outside"),  # past the end of the object
    (TensorMeta(0, 16, "<f4", (8,), 0, 1, 7), "cannot be"),  # nbytes disagrees with shape x item size
    (TensorMeta(0, 16, "<f4", (4,), 0, 1, 8), "unregistered"),  # the entry changed since the call was sent
    (TensorMeta(0, 16, "<f4", (4,), 0, 2, 0), "unregistered"),  # an empty entry
    (TensorMeta(0, 16, "<f4", (4,), 0, wire.EXTRA_SLOTS + 1, 7), "extra segment"),  # no such entry
])
def test_the_worker_refuses_a_descriptor_its_mapping_does_not_hold(obj, meta: TensorMeta, why: str) -> None:
    maps = extra.ExtraMappings()
    with pytest.raises(ValueError, match=why):
        maps.view(announced(obj[0]), meta)
    maps.close()


def test_an_entry_larger_than_the_object_is_refused(obj) -> None:
    with pytest.raises(ValueError, match="fewer than"):
        extra.ExtraMappings().view(announced(obj[0], size=8192), TensorMeta(0, 16, "<f4", (4,), 0, 1, 7))


def test_a_world_writable_object_is_not_mapped(obj) -> None:
    os.chmod(os.path.join(extra.SHM_DIR, obj[0][1:]), 0o666)
    with pytest.raises(ValueError, match="mode 0600"):
        extra.ExtraMappings().view(announced(obj[0]), TensorMeta(0, 16, "<f4", (4,), 0, 1, 7))


def test_the_client_locates_arrays_in_registered_objects_and_announces_them(obj) -> None:
    name, m = obj
    table = extra.ExternalObjects()
    gen = table.add(m, name)
    whole = np.frombuffer(m, np.float32)
    assert table.locate(whole[2:6], "<f4") == (gen, name, 4096, 8)
    assert table.locate(whole[::2], "<f4") is None  # not contiguous: copied
    assert table.locate(np.ones(4, np.float32), "<f4") is None
    header = memoryview(bytearray(wire.HEADER_SIZE))
    slots = extra.LinkSlots(header)
    assert slots.announce(gen, name, 4096) == 1 == slots.announce(gen, name, 4096)
    assert wire.EXTRA.unpack_from(header, wire.EXTRA_OFF)[:2] == (gen, 4096)
    del whole
    table.remove(gen)
    assert not table.active
