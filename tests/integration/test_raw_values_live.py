"""bytes and PIL images through real runner workers."""
from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import shmserve
from tests.runnables import MediaRunnable

pytestmark = pytest.mark.integration


def test_bytes_and_images_cross_both_ways(unique_name, shm_clean):
    r = shmserve.Runner(MediaRunnable, name=unique_name, arena_mb=4, max_latency_ms=50)
    big = bytes(range(256)) * 1024  # 256 KiB: the result comes back leased, not copied out
    img = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "RGB")
    with shmserve.start(r, workers=1):
        assert r.reverse.run(b"abc") == b"cba"
        assert r.reverse.run(big) == big[::-1]

        async def concurrent() -> list[bytes]:
            return await asyncio.gather(*(r.reverse.async_run(bytes([i]) * (i + 1)) for i in range(8)))

        assert asyncio.run(concurrent()) == [bytes([i]) * (i + 1) for i in range(8)]
        frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25], "who": ["x", "y"]})
        pd.testing.assert_frame_equal(r.total.run(frame), frame.assign(total=[1.5, 2.25]))
        out, mode, size = r.flip.run(img)
        assert (mode, size) == ("RGB", [4, 2])
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, ::-1])
