"""Tiny, randomly initialised framework models built locally for the adapter tests.

Nothing is downloaded (the tests run with HF_HUB_OFFLINE=1): the tokenizer is a
word-level vocabulary built here and the model a one-layer BERT of width 16.
"""
from __future__ import annotations

from typing import Any

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + "the a good bad movie film was is not very great awful plot".split()
LABELS = {0: "neg", 1: "neu", 2: "pos"}


def text_classifier() -> Any:
    """A ``text-classification`` pipeline over a tiny random BERT and a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, pipeline

    words = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=32, num_labels=len(LABELS), id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        initializer_range=0.5,  # the default 0.02 leaves every score near 1/3: too close to tell apart
    )
    model = BertForSequenceClassification(config).eval()
    return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def keras_mlp() -> Any:
    """A small Keras 3 functional model (4 -> 8 -> 3, softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
