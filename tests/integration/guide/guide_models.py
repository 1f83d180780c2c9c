"""Models the guide's examples use, standing in for what this machine cannot download.

The guide's NLTK VADER lexicon, EasyOCR and a Hugging Face sentiment pipeline need
downloads; these small models answer the same kinds of question with a word list
and an image's brightness, so that the examples' serving code runs unchanged.
(No torch here: every worker that unpickles these would import it.)
"""
from __future__ import annotations

import numpy as np

POSITIVE = {"love", "great", "good", "happy", "wonderful"}
NEGATIVE = {"hate", "awful", "bad", "sad", "terrible"}


class SentimentIntensityAnalyzer:
    """The shape of nltk's VADER analyzer: ``polarity_scores(text)["compound"]`` in [-1, 1]."""

    def polarity_scores(self, text: str) -> dict[str, float]:
        words = [w.strip(".,!?").lower() for w in text.split()]
        pos = sum(w in POSITIVE for w in words)
        neg = sum(w in NEGATIVE for w in words)
        return {"compound": 0.0 if pos == neg else (pos - neg) / (pos + neg)}


def sent_tokenize(text: str) -> list[str]:
    """nltk.sent_tokenize, roughly."""
    return [s for s in text.replace("!", ".").split(".") if s.strip()]


class BrightnessOCR:
    """Stand-in for an OCR model: 'reads' a bright image as happy text and a dark one as sad text."""

    def __call__(self, image) -> str:
        return "what a great day" if float(np.asarray(image.convert("L")).mean()) > 127 else "an awful day"


class WordSentiment:
    """Stand-in for a transformers sentiment pipeline."""

    def __call__(self, text: str) -> str:
        score = SentimentIntensityAnalyzer().polarity_scores(text)["compound"]
        return "POSITIVE" if score > 0 else "NEGATIVE"
