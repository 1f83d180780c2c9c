"""transformers adapter, in process, over a tiny random pipeline built locally (nothing is downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import shmserve  # noqa: E402
from tests.tiny_models import text_classifier  # noqa: E402

TEXTS = ["the movie was good", "bad plot", "not a very great film", "awful"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], rtol=1e-5)


def test_pipeline_round_trip_and_runner(home: Path) -> None:
    pipe = text_classifier()
    want = pipe(TEXTS)
    assert len({w["label"] for w in want}) > 1 or len({round(w["score"], 3) for w in want}) > 1  # not degenerate
    stored = shmserve.transformers.save_model("sentiment", pipe)
    assert stored.options["task"] == "text-classification" and stored.options["trusted_only"] is False
    assert list(stored.path_of("pipeline").glob("*.safetensors"))
    assert_same(shmserve.transformers.load_model("sentiment")(TEXTS), want)

    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "__call__"
    runner.init_local(quiet=True)
    assert_same(runner.run(TEXTS), want)  # one pipeline batch of four (padded; scores agree to float precision)
    assert_same(runner.run(TEXTS[0]), pipe(TEXTS[0]))


def test_default_signatures_and_refusals(home: Path) -> None:
    pipe = text_classifier()
    stored = shmserve.transformers.save_model("sentiment", pipe)
    assert sorted(stored.signatures) == ["__call__", "predict"]
    assert stored.signatures["__call__"]["batchable"] is False
    with pytest.raises(TypeError, match="transformers.Pipeline"):
        shmserve.transformers.save_model("sentiment", pipe.model)
    with pytest.raises(ValueError, match="summarize"):
        shmserve.transformers.save_model("sentiment", pipe, signatures={"summarize": {}})
    assert len(shmserve.models.list()) == 1


def test_texts_pack_into_rows_that_join_and_unpack_exactly() -> None:
    from shmserve.models import texts

    rows, lengths = texts.pack(["a", "héllo", "nul\x00"])
    assert rows.dtype == np.uint8 and rows.shape == (3, 16) and list(lengths) == [1, 6, 4]
    assert texts.pack(["x" * 17])[0].shape == (1, 32)  # widths are powers of two: similar calls share one
    joined = np.concatenate([rows, texts.pack(["z"])[0]]), np.concatenate([lengths, [1]])
    assert texts.unpack(*joined) == ["a", "héllo", "nul\x00", "z"]
    assert not texts.is_texts([]) and not texts.is_texts(["a", 1]) and texts.is_texts(["a"])


def test_a_batchable_text_signature_crosses_packed(home: Path) -> None:
    pipe = text_classifier()
    stored = shmserve.transformers.save_model("sentiment", pipe, signatures={"__call__": {"batchable": True}})
    runner = stored.to_runner()
    cls = runner.runnable_class
    args, kwargs = cls.prepare_call("__call__", (TEXTS,), {})
    assert isinstance(args[0], np.ndarray) and args[0].shape[0] == len(TEXTS) and len(kwargs) == 1
    assert cls.prepare_call("__call__", ("one text",), {}) == (("one text",), {})  # not a list: as it is
    runner.init_local(quiet=True)
    assert_same(runner.run(TEXTS), pipe(TEXTS))
    assert_same(runner.run(TEXTS[:1]), pipe(TEXTS[:1]))
    assert_same(runner.run(TEXTS[0]), pipe(TEXTS[0]))
