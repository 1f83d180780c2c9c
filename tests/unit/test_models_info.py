"""What BentoML users reach for on the store: models.create, custom_objects, model.info."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

import shmserve
from shmserve.errors import ConfigError
from shmserve.models import ModelStoreError, picklable


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Scaler:
    def __init__(self, k: float) -> None:
        self.k = k

    def predict(self, x: float) -> float:
        return self.k * x


def label_name(i: int) -> str:
    return f"class-{i}"


def test_create_publishes_the_folder_atomically(home: Path) -> None:
    with shmserve.models.create("handmade", labels={"team": "ml"}, metadata={"acc": 0.9}) as draft:
        draft.path_of("weights.bin").write_bytes(b"\x00\x01\x02")
        (draft.path / "sub").mkdir()
        (draft.path / "sub" / "vocab.txt").write_text("a\nb\n")
        assert shmserve.models.list() == []  # nothing visible until the block ends
        assert str(draft.tag) == "handmade:latest"
    assert draft.tag.version is not None
    stored = shmserve.models.get("handmade")
    assert stored.tag == draft.tag and stored.framework == "custom"
    assert stored.path_of("weights.bin").read_bytes() == b"\x00\x01\x02"
    assert stored.path_of("sub/vocab.txt").read_text() == "a\nb\n"
    assert stored.info.labels == {"team": "ml"} and stored.info.metadata == {"acc": 0.9}
    assert stored.info.signatures == {} and stored.info.module == ""
    stored.verify()
    with pytest.raises(ModelStoreError, match="models.create.*own Runnable"):
        stored.to_runner()


def test_create_that_raises_stores_nothing(home: Path) -> None:
    with pytest.raises(RuntimeError, match="half written"):
        with shmserve.models.create("handmade") as draft:
            draft.path_of("weights.bin").write_bytes(b"x")
            raise RuntimeError("half written")
    assert shmserve.models.list() == []
    assert list((home / "models" / ".tmp").iterdir()) == []


def test_custom_objects_are_stored_and_loaded_with_the_model(home: Path) -> None:
    objects = {"labels": ["cat", "dog"], "scale": Scaler(3.0), "name_of": label_name}
    stored = picklable.save_model("scaler", Scaler(2.0), custom_objects=objects)
    assert stored.info["custom_objects"]["keys"] == ["labels", "name_of", "scale"]
    assert stored.options["trusted_only"] is True
    again = shmserve.models.get("scaler")  # a fresh Model reads them from disk
    got = again.custom_objects
    assert got["labels"] == ["cat", "dog"] and got["scale"].predict(2.0) == 6.0
    assert got["name_of"](1) == "class-1"
    assert again.custom_objects is got  # unpickled once
    assert "custom_objects.pkl" in again.info["files"]
    again.verify()
    assert picklable.save_model("plain", Scaler(1.0)).custom_objects == {}


def test_custom_objects_on_create(home: Path) -> None:
    with shmserve.models.create("handmade", custom_objects={"vocab": {"a": 0}}) as draft:
        draft.path_of("w").write_bytes(b"1")
    assert shmserve.models.get("handmade").custom_objects == {"vocab": {"a": 0}}


def test_bad_custom_objects_are_refused_before_anything_is_stored(home: Path) -> None:
    with pytest.raises(ConfigError, match="custom_objects .* must be a dict"):
        picklable.save_model("scaler", Scaler(1.0), custom_objects=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="string keys"):
        picklable.save_model("scaler", Scaler(1.0), custom_objects={1: "x"})  # type: ignore[dict-item]

    class Unpicklable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise TypeError("no pickling here")

    with pytest.raises(ConfigError, match="cannot be pickled"):
        picklable.save_model("scaler", Scaler(1.0), custom_objects={"x": Unpicklable()})
    with pytest.raises(ConfigError, match="options .* JSON"):
        with shmserve.models.create("handmade", options={"x": object()}):
            pass
    assert shmserve.models.list() == []


def test_info_reads_like_bentomls_model_info(home: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    stored = picklable.save_model(
        "scaler", Scaler(2.0), signatures={"predict": {"batchable": True}},
        labels={"owner": "ml"}, metadata={"acc": 0.98},
    )
    info = stored.info
    assert info.tag == stored.tag and info.name == "scaler" and info.version == stored.version
    assert info.module == "shmserve.picklable"
    assert info.labels == {"owner": "ml"} and info.metadata == {"acc": 0.98}
    assert info.signatures == {"predict": {"batchable": True, "batch_dim": 0}}
    assert info.options["format"] in ("pickle", "cloudpickle")
    assert isinstance(info.creation_time, dt.datetime) and info.creation_time.tzinfo is not None
    assert before <= info.creation_time <= dt.datetime.now(dt.timezone.utc)
    assert stored.creation_time == info.creation_time
    assert info.context.framework_name == "picklable"
    assert info.context.shmserve_version == shmserve.__version__
    # Still the manifest itself, as older code reads it.
    assert info["framework"]["name"] == "picklable"
    assert json.loads((stored.path / "model.json").read_text()) == dict(info)
    assert shmserve.models.get("scaler").info == info
