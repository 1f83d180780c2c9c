"""Guide: "Reusable Runnable" (plus the API a user adds to call the two runners)."""
import torch
import shmserve.compat.bentoml as bentoml
from bentoml.io import JSON, NumpyNdarray



class MyModelRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)
    SUPPORTS_CPU_MULTI_THREADING = True

    def __init__(self, model_file):
        self.model = torch.jit.load(model_file)

    @bentoml.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, input_tensor):
        return self.model(input_tensor)


my_runner_1 = bentoml.Runner(
    MyModelRunnable,
    name="my_runner_1",
    runnable_init_params={
        "model_file": "./saved_model_1.pt",
    }
)
my_runner_2 = bentoml.Runner(
    MyModelRunnable,
    name="my_runner_2",
    runnable_init_params={
        "model_file": "./saved_model_2.pt",
    }
)

svc = bentoml.Service(__name__, runners=[my_runner_1, my_runner_2])


@svc.api(input=NumpyNdarray(dtype="float32"), output=JSON())
async def predict(x):
    a = await my_runner_1.predict.async_run(torch.from_numpy(x))
    b = await my_runner_2.predict.async_run(torch.from_numpy(x))
    return {"model_1": a.tolist(), "model_2": b.tolist()}
