"""BentoML 1.1.11 serving the common workload's MLP behind a batching Runner.

Run inside perf/peers/.venvs/bentoml (never the project's environment)::

    bentoml serve bentoml_service:svc --production --api-workers 1 --port 3000

Settings as in ../../shared/bench: max_batch_size 64, max_latency_ms 10, one API
process, one runner worker (resources cpu: 1, set in
bentoml_config.yaml), numeric libraries at one thread.
"""
import bentoml
import numpy as np
from bentoml.io import NumpyNdarray
from workload import MAX_BATCH_SIZE, MAX_LATENCY_MS, MLP


class MLPRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self):
        self.model = MLP()

    @bentoml.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)


runner = bentoml.Runner(MLPRunnable, name="mlp", max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
svc = bentoml.Service("mlp_service", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
async def predict(x: np.ndarray) -> np.ndarray:
    return await runner.predict.async_run(x)
