"""LightGBM adapter, in process: Booster (text format) and scikit-learn API, compared with the model called directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

import shmserve  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 4))
    return x, (x[:, 0] - x[:, 2] > 0).astype(int)


def test_booster_text_format_and_runner(home: Path) -> None:
    x, y = data()
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4}, lgb.Dataset(x, label=y), num_boost_round=6)
    stored = shmserve.lightgbm.save_model("gbm", booster, signatures={"predict": {"batchable": True}})
    assert stored.options["format"] == "text" and stored.options["trusted_only"] is False
    want = booster.predict(x)
    np.testing.assert_array_equal(shmserve.lightgbm.load_model("gbm").predict(x), want)
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    runner.init_local(quiet=True)
    np.testing.assert_array_equal(runner.predict.run(x), want)
    np.testing.assert_array_equal(runner.predict.run(x, raw_score=True), booster.predict(x, raw_score=True))


def test_sklearn_api(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data()
    labels = np.where(y == 1, "spam", "ham")  # a label encoding only the estimator knows
    clf = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=-1).fit(x, labels)
    stored = shmserve.lightgbm.save_model("clf", clf, signatures={"predict": {}, "predict_proba": {}})
    assert stored.options["api"] == "sklearn" and stored.options["trusted_only"] is True
    booster = shmserve.lightgbm.load_model("clf", booster=True)  # the text file alone, no pickle
    np.testing.assert_allclose(booster.predict(x), clf.predict_proba(x)[:, 1])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert stored.to_runner().runnable_class(tag="clf", home=str(home)).model.get_params()["n_jobs"] == 1
    runner = stored.to_runner()
    runner.init_local(quiet=True)
    np.testing.assert_array_equal(runner.predict.run(x), clf.predict(x))
    np.testing.assert_array_equal(runner.predict_proba.run(x), clf.predict_proba(x))


def test_unfitted_and_foreign_models_refused(home: Path) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        shmserve.lightgbm.save_model("clf", lgb.LGBMClassifier())
    with pytest.raises(TypeError, match="lightgbm.Booster or LGBMModel"):
        shmserve.lightgbm.save_model("clf", [1, 2])
    assert shmserve.models.list() == []
