"""Generic picklable adapter, in process."""
from __future__ import annotations

from pathlib import Path

import pytest

import shmserve


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Tokenizer:
    def __init__(self, sep: str) -> None:
        self.sep = sep

    def __call__(self, text: str) -> list[str]:
        return text.split(self.sep)

    def count(self, text: str) -> int:
        return len(self(text))


def test_callable_object_methods(home: Path) -> None:
    stored = shmserve.picklable.save_model("tok", Tokenizer(","), signatures={"__call__": {}, "count": {}, "predict": {}})
    assert stored.options["trusted_only"] is True
    runner = shmserve.picklable.get("tok").to_runner()
    runner.init_local()
    assert runner.count.run("a,b,c") == 3
    assert runner.predict.run("a,b") == ["a", "b"]  # no .predict method: calls the object
    assert runner.__call__.run("x,y") == ["x", "y"]
    assert shmserve.picklable.load_model("tok").sep == ","


def test_lambda_needs_cloudpickle(home: Path) -> None:
    pytest.importorskip("cloudpickle")
    stored = shmserve.picklable.save_model("inc", lambda x: x + 1)
    assert stored.options["format"] == "cloudpickle"
    assert stored.signatures == {"__call__": {"batchable": False, "batch_dim": 0}}  # the default
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "__call__"
    runner.init_local()
    assert runner.__call__.run(41) == 42


def test_not_callable_refused(home: Path) -> None:
    with pytest.raises(TypeError, match="not callable"):
        shmserve.picklable.save_model("d", {"a": 1})


class Scorer:
    def __call__(self, x: int) -> int:
        return x + 1

    def predict(self, x: int) -> int:
        return x * 10


def test_default_signatures_keep_predict_where_the_object_has_it(home: Path) -> None:
    stored = shmserve.picklable.save_model("scorer", Scorer())
    assert sorted(stored.signatures) == ["__call__", "predict"]
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "__call__"
    runner.init_local()
    assert runner.__call__.run(2) == 3 and runner.predict.run(2) == 20


class OnlyPredict:
    def predict(self, x: int) -> int:
        return -x


def test_object_that_is_not_callable_defaults_to_predict(home: Path) -> None:
    stored = shmserve.picklable.save_model("p", OnlyPredict())
    assert list(stored.signatures) == ["predict"]
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    runner.init_local()
    assert runner.predict.run(4) == -4
