"""Guide: "Concurrent Runs" (a scikit-learn model stands in for the XGBoost one)."""
import asyncio

import numpy as np
import PIL.Image
import shmserve.compat.bentoml as bentoml
from bentoml.io import Image, Text



class MyPreprocessRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @bentoml.Runnable.method(batchable=False)
    def __call__(self, image):
        small = image.convert("L").resize((2, 2))
        return np.asarray(small, dtype=np.float32).reshape(1, 4) / 255.0


def post_process(a, b):
    return f"a={float(a[0]):.4f} b={int(np.argmax(b[0]))}"


preprocess_runner = bentoml.Runner(MyPreprocessRunnable)
model_a_runner = bentoml.sklearn.get('model_a:latest').to_runner()
model_b_runner = bentoml.pytorch.get('model_b:latest').to_runner()

svc = bentoml.Service('inference_graph_demo', runners=[
    preprocess_runner,
    model_a_runner,
    model_b_runner
])


@svc.api(input=Image(), output=Text())
async def predict(input_image: PIL.Image.Image) -> str:
    model_input = await preprocess_runner.async_run(input_image)

    results = await asyncio.gather(
        model_a_runner.async_run(model_input),
        model_b_runner.async_run(model_input),
    )

    return post_process(
        results[0],  # model a result
        results[1],  # model b result
    )
