"""Example service: the benchmark MLP (784 -> 1024 -> 10, float32) behind HTTP.

The model is the one of ``bench/workload.py`` (same weights, seed 0), with the
benchmark's batching settings: max_batch_size 64, max_latency_ms 10.

Run it from this folder::

    shmserve serve service_mlp:svc --port 3000

and call it::

    curl -s -X POST localhost:3000/predict -H 'content-type: application/json' \
         -d "[[$(python3 -c 'print(",".join(["0.1"]*784))')]]"
    curl -s -X POST localhost:3000/info -d '{}'
    python3 -c 'import numpy as np; np.save("x.npy", np.ones((2, 784), np.float32))'
    curl -s -X POST localhost:3000/predict --data-binary @x.npy \
         -H 'content-type: application/x-npy' -H 'accept: application/x-npy' -o y.npy

Raw bytes work too: ``content-type: application/octet-stream`` with the
``X-Tensor-Dtype: float32`` and ``X-Tensor-Shape: 2,784`` headers. The API
list with schemas is at ``GET /docs.json``; Prometheus metrics at ``/metrics``.

Set OMP_NUM_THREADS=1 (and OPENBLAS_/MKL_) to match the benchmark settings.
"""
from __future__ import annotations

import numpy as np

import shmserve
from shmserve.io import JSON, NumpyNdarray

IN_DIM, HIDDEN, OUT_DIM = 784, 1024, 10


class MLPRunnable(shmserve.Runnable):
    """relu(x @ W1 + b1) @ W2 + b2 with fixed random weights."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((IN_DIM, HIDDEN)) / np.sqrt(IN_DIM)).astype(np.float32)
        self.b1 = rng.standard_normal(HIDDEN).astype(np.float32) * 0.01
        self.w2 = (rng.standard_normal((HIDDEN, OUT_DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.b2 = rng.standard_normal(OUT_DIM).astype(np.float32) * 0.01

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return h @ self.w2 + self.b2


runner = shmserve.Runner(MLPRunnable, name="mlp", max_batch_size=64, max_latency_ms=10, workers=1)
svc = shmserve.Service("mlp_service", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, IN_DIM), enforce_shape=True), output=NumpyNdarray())
async def predict(x: np.ndarray) -> np.ndarray:
    """Class scores (n, 10) for a batch of flattened 28x28 images (n, 784)."""
    return await runner.predict.async_run(x)


@svc.api(input=JSON(), output=JSON())
def info(body: object) -> dict:
    """Static facts about the model (a plain function: it runs in the API worker's thread pool)."""
    return {"model": "mlp", "input": [-1, IN_DIM], "output": [-1, OUT_DIM]}
