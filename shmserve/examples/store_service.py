"""The quickstart's service: a torch model from the store, behind HTTP.

Serve it (after `python -m shmserve.examples.quickstart` saved the model)::

    shmserve serve shmserve.examples.store_service:svc --port 3000
"""
from __future__ import annotations

import numpy as np

import shmserve
from shmserve.io import JSON, NumpyNdarray

MODEL_TAG = "quickstart_mlp:latest"

runner = shmserve.pytorch.get(MODEL_TAG).to_runner(name="quickstart_mlp", max_batch_size=64, max_latency_ms=10,
                                                  workers=1)
svc = shmserve.Service("quickstart", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 784), enforce_shape=True), output=NumpyNdarray())
async def predict(x: np.ndarray) -> np.ndarray:
    """Class scores (n, 10) for flattened 28x28 images (n, 784)."""
    return await runner.predict.async_run(x)


@svc.api(input=JSON(), output=JSON())
def model_info(body: object) -> dict:
    """Which stored model this service runs."""
    model = shmserve.models.get(MODEL_TAG)
    return {"tag": str(model.tag), "framework": model.framework}
