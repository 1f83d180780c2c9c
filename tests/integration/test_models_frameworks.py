"""XGBoost, LightGBM, transformers and Keras runners served through shared memory: every caller
gets what the model called directly returns, and concurrent tensor calls are joined into batches."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shmserve.traces import add_trace_hook, remove_trace_hook
from tests.integration.test_models_serve import _concurrently, _serve, home  # noqa: F401  (home: fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

pytestmark = pytest.mark.integration
ROUNDS = 5  # concurrent rounds tried until one is served as a joined batch


def _check_batched(runner: Any, method: str, inputs: list[Any], same: Any) -> None:
    """Call `method` on every input from its own thread, compare each answer with `same(i, got)`,
    and repeat (a few rounds at most) until the worker has joined calls into one batch."""
    sizes: list[float] = []

    def hook(name: str, called: str, trace: dict[str, float]) -> None:
        if name == runner.name and called == method:
            sizes.append(trace.get("batch_size", 0))

    add_trace_hook(hook)
    try:
        for _ in range(ROUNDS):
            for i, got in enumerate(_concurrently(getattr(runner, method).run, inputs)):
                same(i, got)
            if max(sizes, default=0) > 1:
                return
    finally:
        remove_trace_hook(hook)
    pytest.fail(f"{ROUNDS} rounds of {len(inputs)} concurrent one-row calls were never joined; batch sizes {sizes}")


def _rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def test_xgboost_booster_served(home: Path) -> None:  # noqa: F811
    xgb = pytest.importorskip("xgboost")
    import shmserve

    x = _rows(64, 5)
    booster = xgb.train({"max_depth": 3}, xgb.DMatrix(x, label=x[:, 0] > 0), num_boost_round=5)
    stored = shmserve.xgboost.save_model("gbt", booster, format="ubj", signatures={"predict": {"batchable": True}})
    rows = [x[i:i + 1] for i in range(8)]
    want = [booster.predict(xgb.DMatrix(r)) for r in rows]

    def check(runner: Any) -> None:
        np.testing.assert_array_equal(runner.run(x), booster.predict(xgb.DMatrix(x)))
        _check_batched(runner, "predict", rows, lambda i, got: np.testing.assert_array_equal(got, want[i]))

    _serve(stored, check, max_batch_size=16, max_latency_ms=20)


def test_lightgbm_estimator_served(home: Path) -> None:  # noqa: F811
    lgb = pytest.importorskip("lightgbm")
    import shmserve

    x = _rows(120, 4, seed=1)
    clf = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(x, x[:, 0] - x[:, 2] > 0)
    stored = shmserve.lightgbm.save_model("clf", clf, signatures={"predict_proba": {"batchable": True}})
    rows = [x[i:i + 1] for i in range(8)]
    want = [clf.predict_proba(r) for r in rows]

    def check(runner: Any) -> None:
        _check_batched(runner, "predict_proba", rows, lambda i, got: np.testing.assert_allclose(got, want[i], rtol=1e-12))

    _serve(stored, check, max_batch_size=16, max_latency_ms=20)


def test_transformers_pipeline_served(home: Path) -> None:  # noqa: F811
    # Not batchable (the default signature): text calls cross as JSON and each runs on its own.
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import shmserve
    from tests.tiny_models import text_classifier

    pipe = text_classifier()
    texts = ["the movie was good", "bad plot", "not a very great film", "awful"]
    stored = shmserve.transformers.save_model("sentiment", pipe)

    def same(got: list[dict], want: list[dict]) -> None:
        assert [g["label"] for g in got] == [w["label"] for w in want]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], rtol=1e-5)

    def check(runner: Any) -> None:
        same(runner.run(texts), pipe(texts))
        for text, got in zip(texts, _concurrently(runner.run, texts), strict=True):
            same(got, pipe(text))

    _serve(stored, check)


def test_transformers_text_lists_join_one_batch(home: Path) -> None:  # noqa: F811
    # A batchable signature: concurrent calls with lists of strings join along dim 0, as in BentoML.
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import shmserve
    from tests.tiny_models import text_classifier

    pipe = text_classifier()
    lists = [["the movie was good"], ["bad plot", "awful"], ["not a very great film"], ["good"], ["a bad film"]] * 2
    want = [pipe(x) for x in lists]
    stored = shmserve.transformers.save_model("sentiment", pipe, signatures={"__call__": {"batchable": True}})

    def same(i: int, got: list[dict]) -> None:
        assert [g["label"] for g in got] == [w["label"] for w in want[i]]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want[i]], rtol=1e-5)

    _serve(stored, lambda runner: _check_batched(runner, "__call__", lists, same), max_batch_size=16,
           max_latency_ms=20)


def test_keras_model_served(home: Path) -> None:  # noqa: F811
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    import shmserve
    from tests.tiny_models import keras_mlp

    model = keras_mlp()
    x = _rows(8, 4, seed=2)
    want = [model.predict(x[i:i + 1], verbose=0) for i in range(8)]
    stored = shmserve.keras.save_model("mlp", model, signatures={"predict": {"batchable": True}})

    def check(runner: Any) -> None:
        rows = [x[i:i + 1] for i in range(8)]
        _check_batched(runner, "predict", rows, lambda i, got: np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-6))

    _serve(stored, check, max_batch_size=16, max_latency_ms=20)
