"""Quickstart: start an MLP runner, call it through shared memory, check the answer.

    python -m shmserve.examples.quickstart
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

import shmserve
from shmserve.examples.mlp import MLPRunnable


def main() -> int:
    runner = shmserve.Runner(MLPRunnable, name="quickstart-mlp", max_batch_size=64, max_latency_ms=10)
    x = np.random.default_rng(1).standard_normal((1, 784)).astype(np.float32)
    expected = MLPRunnable().predict(x)
    t0 = time.perf_counter()
    with shmserve.start(runner, workers=1):
        print(f"runner 'quickstart-mlp' started in {time.perf_counter() - t0:.2f} s")
        y = runner.predict.run(x)
        print("predict(x) through shared memory:", np.array2string(y, precision=3))

        async def many() -> list[np.ndarray]:
            xs = [x] * 32
            return await asyncio.gather(*[runner.predict.async_run(v) for v in xs])

        outs = asyncio.run(many())
    ok = np.allclose(y, expected, atol=1e-5) and all(np.allclose(o, expected, atol=1e-5) for o in outs)
    print("matches the model called in-process:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
