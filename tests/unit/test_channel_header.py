"""The channel header check: a segment is attached only with shmserve's magic and this wire version."""
from __future__ import annotations

import struct

import pytest

from shmserve.shm import wire
from shmserve.shm.wire import ChannelLayout

U64 = struct.Struct("<Q")


def _header(magic: int = wire.MAGIC, version: int = wire.VERSION) -> memoryview:
    layout = ChannelLayout(8, 1 << 16, 1 << 15)
    buf = memoryview(bytearray(layout.total))
    layout.write_header(buf)
    U64.pack_into(buf, wire.H_MAGIC, magic)
    U64.pack_into(buf, wire.H_VERSION, version)
    return buf


def test_a_header_of_this_magic_and_version_is_read_back() -> None:
    back = ChannelLayout.read_header(_header())
    assert (back.slots, back.req_arena_size, back.resp_arena_size) == (8, 1 << 16, 1 << 15)


@pytest.mark.parametrize("version", [0, wire.VERSION - 1, wire.VERSION + 1, 1 << 63])
def test_the_right_magic_with_another_version_is_refused(version: int) -> None:
    # A client of another shmserve release writes other offsets: reading them by this layout would
    # misplace every descriptor, so the segment must be refused, not attached.
    with pytest.raises(ValueError, match="version"):
        ChannelLayout.read_header(_header(version=version))


@pytest.mark.parametrize("magic", [0, wire.MAGIC ^ 1, int.from_bytes(b"SHMSRV00", "little")])
def test_another_magic_is_refused_whatever_the_version(magic: int) -> None:
    with pytest.raises(ValueError, match="not a shmserve channel"):
        ChannelLayout.read_header(_header(magic=magic))


def test_the_magic_spells_the_documented_bytes() -> None:
    assert bytes(_header()[:8]) == b"SHMSRV01"
