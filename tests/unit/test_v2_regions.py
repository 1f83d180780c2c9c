"""RegionTable: trust checks, bounds, in-place reads and writes, sharing through a folder (no processes)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shmserve.oip.errors import InferError
from shmserve.oip.regions import RegionTable


@pytest.fixture
def key() -> Iterator[str]:
    name = "v2unit_" + uuid.uuid4().hex[:12]  # not "shmserve_": the leak checks watch those
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 64)
    os.close(fd)
    yield "/" + name
    os.unlink(f"/dev/shm/{name}")


def test_views_and_writes_stay_inside_the_region(key: str) -> None:
    table = RegionTable()
    table.register("r", key, 16, 32)
    with pytest.raises(InferError, match="already registered"):
        table.register("r", key, 0, 8)
    table.write(("r", 8, 16), np.arange(4, dtype=np.float32), "output")
    view = table.view("r", 8, 16, "input")
    np.testing.assert_array_equal(np.frombuffer(view, np.float32), np.arange(4))
    with open(f"/dev/shm{key}", "rb") as f:  # the bytes landed at region offset 16 + 8 of the object
        assert np.frombuffer(f.read()[24:40], np.float32).tolist() == [0, 1, 2, 3]
    del view
    for offset, size in [(-1, 4), (30, 4), (0, 33)]:
        with pytest.raises(InferError, match="fall outside region"):
            table.view("r", offset, size, "input")
    with pytest.raises(InferError, match="needs 64 bytes"):
        table.write(("r", 0, 32), np.zeros(16, np.float32), "output")
    with pytest.raises(InferError, match="past the end"):
        table.register("big", key, 40, 32)
    table.unregister("r")
    assert table.status() == []
    with pytest.raises(InferError, match="no shared-memory region named 'r'"):
        table.view("r", 0, 4, "input")
    table.close()


def test_peers_share_registrations_through_the_folder(key: str, tmp_path: Path) -> None:
    a, b = RegionTable(tmp_path), RegionTable(tmp_path)
    a.register("r", key, 0, 64)
    assert [s["name"] for s in b.status()] == ["r"]  # b maps it on first sight
    with pytest.raises(InferError, match="already registered"):
        b.register("r", key, 0, 64)
    assert len(b.view("r", 0, 64, "input")) == 64
    b.unregister("r")
    with pytest.raises(InferError, match="no shared-memory region"):
        a.view("r", 0, 4, "input")
    a.close()
    b.close()
    assert list(tmp_path.iterdir()) == []
