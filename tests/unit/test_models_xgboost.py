"""XGBoost adapter, in process: Booster and scikit-learn API, JSON and UBJ, compared with the model called directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

xgb = pytest.importorskip("xgboost")

import shmserve  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 5)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)


@pytest.mark.parametrize("fmt", ["json", "ubj"])
def test_booster_round_trip_and_runner(home: Path, fmt: str) -> None:
    x, y = data()
    booster = xgb.train({"max_depth": 3, "objective": "binary:logistic"}, xgb.DMatrix(x, label=y), num_boost_round=8)
    stored = shmserve.xgboost.save_model("gbt", booster, format=fmt, signatures={"predict": {"batchable": True}})
    assert stored.options["trusted_only"] is False and stored.path_of(stored.options["file"]).suffix == f".{fmt}"
    want = booster.predict(xgb.DMatrix(x))
    np.testing.assert_array_equal(shmserve.xgboost.load_model("gbt").predict(xgb.DMatrix(x)), want)
    runner = shmserve.xgboost.get("gbt").to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    runner.init_local(quiet=True)
    np.testing.assert_array_equal(runner.predict.run(x), want)  # numpy in: wrapped in a DMatrix
    np.testing.assert_array_equal(runner.run(x[:3]), want[:3])


def test_sklearn_api_is_rebuilt_without_pickle(home: Path) -> None:
    x, y = data()
    clf = xgb.XGBClassifier(n_estimators=6, max_depth=2, n_jobs=-1).fit(x, y)
    stored = shmserve.xgboost.save_model("clf", clf, signatures={"predict": {}, "predict_proba": {}})
    assert stored.options["api"] == "sklearn" and stored.options["estimator"] == "XGBClassifier"
    loaded = shmserve.xgboost.load_model("clf")
    assert isinstance(loaded, xgb.XGBClassifier)
    np.testing.assert_array_equal(loaded.predict_proba(x), clf.predict_proba(x))
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    runner.init_local(quiet=True)
    np.testing.assert_array_equal(runner.predict.run(x), clf.predict(x))
    np.testing.assert_array_equal(runner.predict_proba.run(x), clf.predict_proba(x))


def test_threads_follow_the_strategy(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data()
    shmserve.xgboost.save_model("clf", xgb.XGBRegressor(n_estimators=2, n_jobs=-1).fit(x, y))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    runnable = shmserve.xgboost.get("clf").to_runner().runnable_class(tag="clf", home=str(home))
    assert runnable.model.get_params()["n_jobs"] == 2


def test_bad_input_is_refused_clearly(home: Path) -> None:
    x, y = data()
    booster = xgb.train({}, xgb.DMatrix(x, label=y), num_boost_round=1)
    with pytest.raises(ValueError, match="format must be one of"):
        shmserve.xgboost.save_model("gbt", booster, format="pickle")
    with pytest.raises(TypeError, match="xgboost.Booster or XGBModel"):
        shmserve.xgboost.save_model("gbt", object())
    with pytest.raises(ValueError, match="predict_proba"):
        shmserve.xgboost.save_model("gbt", booster, signatures={"predict_proba": {}})  # a Booster has no such method
    assert shmserve.models.list() == []
