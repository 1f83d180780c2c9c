"""Guide: "Creating a Runnable" (examples/custom_runner/nltk_pretrained_model/service.py)."""
from __future__ import annotations

import typing as t
from statistics import mean

import guide_models as nltk  # stand-in: the VADER lexicon cannot be downloaded here
from guide_models import SentimentIntensityAnalyzer

import shmserve.compat.bentoml as bentoml

if t.TYPE_CHECKING:
    from bentoml._internal.runner.runner import RunnerImpl


class NLTKSentimentAnalysisRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self):
        self.sia = SentimentIntensityAnalyzer()

    @bentoml.Runnable.method(batchable=False)
    def is_positive(self, input_text: str) -> bool:
        scores = [
            self.sia.polarity_scores(sentence)["compound"]
            for sentence in nltk.sent_tokenize(input_text)
        ]
        return mean(scores) > 0


nltk_runner = t.cast(
    "RunnerImpl", bentoml.Runner(NLTKSentimentAnalysisRunnable, name="nltk_sentiment")
)

svc = bentoml.Service("sentiment_analyzer", runners=[nltk_runner])


@svc.api(input=bentoml.io.Text(), output=bentoml.io.JSON())
async def analysis(input_text: str) -> dict[str, bool]:
    is_positive = await nltk_runner.is_positive.async_run(input_text)
    return {"is_positive": is_positive}
