"""scikit-learn adapter, in process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402

import shmserve  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fitted() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return LogisticRegression().fit(x, y), x


def test_save_load_and_runner(home: Path) -> None:
    clf, x = fitted()
    stored = shmserve.sklearn.save_model(
        "spam", clf, signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}}
    )
    assert stored.framework == "sklearn" and stored.options["trusted_only"] is True
    import sklearn

    assert stored.info["framework"]["version"] == sklearn.__version__
    loaded = shmserve.sklearn.load_model("spam")
    np.testing.assert_array_equal(loaded.predict(x), clf.predict(x))

    runner = shmserve.sklearn.get("spam:latest").to_runner(max_batch_size=8)
    assert runner.runnable_class.SUPPORTED_RESOURCES == ("cpu",)
    runner.init_local()
    np.testing.assert_array_equal(runner.predict.run(x[:5]), clf.predict(x[:5]))
    np.testing.assert_allclose(runner.predict_proba.run(x[:5]), clf.predict_proba(x[:5]))
    # two signatures and no __call__: runner.run() calls the adapter's DEFAULT_METHOD, predict
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    np.testing.assert_array_equal(runner.run(x[:5]), clf.predict(x[:5]))


def test_custom_runnable_over_stored_model(home: Path) -> None:
    clf, x = fitted()
    stored = shmserve.sklearn.save_model("spam", clf)

    class SpamDetection(shmserve.Runnable):
        def __init__(self) -> None:
            self.clf = shmserve.sklearn.load_model(stored)

        @shmserve.Runnable.method(batchable=True)
        def is_spam(self, x: np.ndarray) -> np.ndarray:
            return self.clf.predict(x) == 1

    runner = shmserve.Runner(SpamDetection, name="spam_detection")
    runner.init_local()
    np.testing.assert_array_equal(runner.is_spam.run(x), clf.predict(x) == 1)


def test_missing_method_refused(home: Path) -> None:
    clf, _ = fitted()
    with pytest.raises(ValueError, match="transform"):
        shmserve.sklearn.save_model("spam", clf, signatures={"transform": {}})
