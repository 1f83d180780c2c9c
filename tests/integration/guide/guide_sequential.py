"""Guide: "Sequential Runs" (picklable models stand in for the transformers and EasyOCR ones)."""
import asyncio  # noqa: F401  (the guide imports it)

import PIL.Image
import shmserve.compat.bentoml as bentoml
from bentoml.io import Image, Text


transformers_runner = bentoml.picklable_model.get("sentiment_model:latest").to_runner()
ocr_runner = bentoml.picklable_model.get("ocr_model:latest").to_runner()

svc = bentoml.Service("sentiment_analysis", runners=[transformers_runner, ocr_runner])


@svc.api(input=Image(), output=Text())
def classify(input: PIL.Image.Image) -> str:
    ocr_text = ocr_runner.run(input)
    return transformers_runner.run(ocr_text)


@svc.api(input=Image(), output=Text())
async def classify_async(input: PIL.Image.Image) -> str:
    ocr_text = await ocr_runner.async_run(input)
    return await transformers_runner.async_run(ocr_text)
