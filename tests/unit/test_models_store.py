"""The model store: tags, versions, manifest, list/get/delete, atomic saves, archives, CLI."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

import shmserve
from shmserve.cli import main as cli_main
from shmserve.models import picklable, store
from shmserve.models.archive import export_model, import_model, read_manifest
from shmserve.models.store import (
    CorruptModel,
    ModelExists,
    ModelNotFound,
    ModelStoreError,
    Tag,
    UnknownFramework,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def double(x: int) -> int:
    return 2 * x


class Scaler:
    def __init__(self, k: float) -> None:
        self.k = k

    def predict(self, x: float) -> float:
        return self.k * x


def test_tag_parsing() -> None:
    assert Tag.parse("demo") == Tag("demo", None)
    assert Tag.parse("demo:latest") == Tag("demo", None)
    assert Tag.parse("demo:v1") == Tag("demo", "v1")
    assert str(Tag("demo", None)) == "demo:latest"
    for bad in ("Demo", "", ":v1", "de mo", "demo:V1", "demo:a/b", "../x"):
        with pytest.raises(ModelStoreError, match="invalid model"):
            Tag.parse(bad)


def test_versions_are_fixed_width_and_sort_by_time() -> None:
    import datetime as dt

    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    a = store.new_version(t0)
    b = store.new_version(t0 + dt.timedelta(microseconds=1))
    c = store.new_version(t0 + dt.timedelta(days=300))
    assert len(a) == len(b) == len(c)
    assert a < b < c
    assert a.startswith("20260102-030405-000006-")
    assert len({store.new_version(t0) for _ in range(50)}) > 1  # random suffix


def test_save_writes_readable_manifest(home: Path) -> None:
    m = picklable.save_model(
        "doubler", double, signatures={"__call__": {"batchable": True, "batch_dim": 0}},
        labels={"owner": "ml"}, metadata={"acc": 0.98},
    )
    assert m.path == home / "models" / "doubler" / m.version
    info = json.loads((m.path / "model.json").read_text())
    assert info["name"] == "doubler" and info["version"] == m.version
    assert info["framework"]["name"] == "picklable"
    assert info["python_version"].count(".") == 2
    assert info["signatures"] == {"__call__": {"batchable": True, "batch_dim": 0}}
    assert info["labels"] == {"owner": "ml"} and info["metadata"] == {"acc": 0.98}
    assert info["size_bytes"] == (m.path / "model.pkl").stat().st_size > 0
    assert info["files"]["model.pkl"]["size"] == info["size_bytes"]
    assert info["created_at"].endswith("+00:00")
    m.verify()


def test_get_latest_list_and_delete(home: Path) -> None:
    first = picklable.save_model("scaler", Scaler(2.0))
    second = picklable.save_model("scaler", Scaler(3.0))
    other = picklable.save_model("doubler", double)
    assert first.version < second.version
    assert shmserve.models.get("scaler").version == second.version
    assert shmserve.models.get("scaler:latest").version == second.version
    assert shmserve.models.get(f"scaler:{first.version}").version == first.version
    assert picklable.load_model("scaler").k == 3.0
    assert [str(m) for m in shmserve.models.list()] == [str(other), str(first), str(second)]
    assert [str(m) for m in shmserve.models.list("scaler")] == [str(first), str(second)]

    deleted = shmserve.models.delete("scaler")  # the newest
    assert deleted.version == second.version
    assert shmserve.models.get("scaler").version == first.version
    shmserve.models.delete(f"scaler:{first.version}")
    assert not (home / "models" / "scaler").exists()
    with pytest.raises(ModelNotFound, match="scaler"):
        shmserve.models.get("scaler")
    assert [str(m) for m in shmserve.models.list()] == [str(other)]


def test_missing_tag_is_a_clear_error(home: Path) -> None:
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        shmserve.models.get("nope")
    picklable.save_model("doubler", double)
    with pytest.raises(ModelNotFound, match="doubler:20000101"):
        shmserve.models.get("doubler:20000101")
    with pytest.raises(ModelNotFound):
        shmserve.models.delete("nope:v1")
    assert shmserve.models.list("nope") == []


def test_empty_store_lists_nothing(home: Path) -> None:
    assert shmserve.models.list() == []


def test_corrupt_manifest_names_the_tag_and_list_survives(home: Path) -> None:
    good = picklable.save_model("doubler", double)
    bad = picklable.save_model("broken", double)
    (bad.path / "model.json").write_text("{ not json")
    with pytest.raises(CorruptModel, match=f"broken:{bad.version}"):
        shmserve.models.get("broken")
    assert [str(m) for m in shmserve.models.list()] == [str(good)]
    # a manifest that parses but lacks the framework is corrupt too
    (bad.path / "model.json").write_text(json.dumps({"name": "broken", "version": bad.version}))
    with pytest.raises(CorruptModel, match="framework"):
        shmserve.models.get(f"broken:{bad.version}")
    assert shmserve.models.delete(f"broken:{bad.version}").version == bad.version  # deletable though unreadable
    assert not bad.path.exists()


def test_unknown_framework_names_the_tag(home: Path) -> None:
    m = picklable.save_model("doubler", double)
    info = json.loads((m.path / "model.json").read_text())
    info["framework"]["name"] = "tensorflow"
    (m.path / "model.json").write_text(json.dumps(info))
    model = shmserve.models.get("doubler")
    with pytest.raises(UnknownFramework, match=f"doubler:{m.version}.*tensorflow"):
        model.to_runner()


def test_adapter_mismatch_is_refused(home: Path) -> None:
    picklable.save_model("doubler", double)
    pytest.importorskip("sklearn")
    with pytest.raises(ModelStoreError, match="picklable"):
        shmserve.sklearn.get("doubler")


def test_failed_save_leaves_nothing_visible(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picklable.save_model("doubler", double)

    class Exploding:
        def __call__(self, x: int) -> int:
            return x

        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        picklable.save_model("doubler", Exploding())
    with pytest.raises(RuntimeError, match="disk on fire"):
        picklable.save_model("fresh", Exploding())
    assert [m.name for m in shmserve.models.list()] == ["doubler"]
    assert list((home / "models" / ".tmp").iterdir()) == []
    with pytest.raises(ModelNotFound):
        shmserve.models.get("fresh")


def test_sweep_removes_leftovers_of_dead_processes(home: Path) -> None:
    tmp = home / "models" / ".tmp"
    tmp.mkdir(parents=True)
    dead = tmp / "999999999-abc"  # no such pid
    (dead / "sub").mkdir(parents=True)
    mine = store.make_temp_dir(home)
    assert store.sweep_temp(home) == 1
    assert not dead.exists() and mine.exists()


def test_bad_signatures_labels_metadata(home: Path) -> None:
    with pytest.raises(shmserve.ConfigError, match="unknown keys"):
        picklable.save_model("d", double, signatures={"__call__": {"batchsize": 3}})
    with pytest.raises(shmserve.ConfigError, match="batch_dim"):
        picklable.save_model("d", double, signatures={"__call__": {"batch_dim": "x"}})
    with pytest.raises(shmserve.ConfigError, match="JSON"):
        picklable.save_model("d", double, metadata={"x": object()})
    with pytest.raises(shmserve.ConfigError, match="labels"):
        picklable.save_model("d", double, labels={"x": 1})  # type: ignore[dict-item]
    with pytest.raises(AttributeError, match="predict_proba"):
        picklable.save_model("d", Scaler(1.0), signatures={"predict_proba": {}})
    assert shmserve.models.list() == []


def test_to_runner_overrides_and_signatures(home: Path) -> None:
    picklable.save_model("scaler", Scaler(2.0), signatures={"predict": {"batchable": True, "batch_dim": [0, 1]}})
    runner = shmserve.models.get("scaler").to_runner(name="s2", max_batch_size=7, max_latency_ms=3)
    assert runner.name == "s2"
    cfg = runner.method_configs["predict"]
    assert (cfg.max_batch_size, cfg.max_latency_ms) == (7, 3.0)
    assert (cfg.signature.batchable, cfg.signature.input_dim, cfg.signature.output_dim) == (True, 0, 1)
    assert shmserve.picklable.get("scaler").to_runner().name == "scaler"
    runner.init_local()
    assert runner.predict.run(5.0) == 10.0


def test_runnable_class_pickles_by_reference(home: Path) -> None:
    import pickle

    picklable.save_model("doubler", double, signatures={"__call__": {}})
    cls = shmserve.models.get("doubler").to_runner().runnable_class
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert cls.__module__ == "shmserve.models.picklable"
    assert "__call__" in cls.methods


def test_export_import_round_trip(home: Path, tmp_path: Path) -> None:
    m = picklable.save_model("scaler", Scaler(4.0), labels={"k": "v"})
    seen: list[tuple[int, int]] = []
    archive = export_model("scaler", tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert archive == tmp_path / f"scaler-{m.version}.shmmodel"
    assert seen and seen[-1] == (m.size, m.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert read_manifest(archive)["version"] == m.version

    shmserve.models.delete(str(m))
    seen.clear()
    imported = import_model(archive, progress=lambda d, t: seen.append((d, t)))
    assert str(imported) == str(m)
    assert seen[-1][0] == seen[-1][1] == archive.stat().st_size
    assert imported.labels == {"k": "v"}
    assert picklable.load_model("scaler").k == 4.0
    imported.verify()
    with pytest.raises(ModelExists, match=str(m)):
        import_model(archive)
    assert list((home / "models" / ".tmp").iterdir()) == []


def test_export_gzip(home: Path, tmp_path: Path) -> None:
    m = picklable.save_model("scaler", Scaler(4.0))
    archive = export_model(m, tmp_path / "s.tar.gz")
    with open(archive, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    shmserve.models.delete(str(m))
    assert picklable.load_model(import_model(archive)).k == 4.0


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_import_refuses_tampered_and_unsafe_archives(home: Path, tmp_path: Path) -> None:
    m = picklable.save_model("scaler", Scaler(4.0))
    manifest = (m.path / "model.json").read_bytes()
    payload = (m.path / "model.pkl").read_bytes()
    shmserve.models.delete(str(m))

    tampered = _tar_with(tmp_path / "t.shmmodel", {"model.json": manifest, "model.pkl": payload + b"x"})
    with pytest.raises(CorruptModel, match="checksum"):
        import_model(tampered)
    escaping = _tar_with(tmp_path / "e.shmmodel", {"model.json": manifest, "../evil": b"x"})
    with pytest.raises(CorruptModel, match="escapes"):
        import_model(escaping)
    not_model = _tar_with(tmp_path / "n.shmmodel", {"readme": b"x"})
    with pytest.raises(CorruptModel, match="not a shmserve model archive"):
        import_model(not_model)
    (tmp_path / "junk.shmmodel").write_bytes(b"junk" * 100)
    with pytest.raises(CorruptModel):
        import_model(tmp_path / "junk.shmmodel")
    assert not (tmp_path / "evil").exists() and not (home / "models" / "evil").exists()
    assert shmserve.models.list() == []
    assert list((home / "models" / ".tmp").iterdir()) == []


def test_cli(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = picklable.save_model("scaler", Scaler(4.0))
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "TAG" in out and str(m) in out and "picklable" in out

    assert cli_main(["models", "get", "scaler"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == m.version

    assert cli_main(["models", "get", "nope"]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err

    assert cli_main(["models", "export", "scaler", str(tmp_path), "--progress"]) == 0
    captured = capsys.readouterr()
    assert "100.0%" in captured.err and "exported" in captured.out
    archive = tmp_path / f"scaler-{m.version}.shmmodel"

    assert cli_main(["models", "delete", str(m)]) == 1  # stdin is not a terminal: needs --yes
    assert "--yes" in capsys.readouterr().err
    assert cli_main(["models", "delete", str(m), "--yes"]) == 0
    assert cli_main(["models", "list", "--json"]) == 0
    assert "deleted" in capsys.readouterr().out

    assert cli_main(["models", "import", str(archive), "--progress"]) == 0
    captured = capsys.readouterr()
    assert "100.0%" in captured.err and "pickle-based" in captured.err
    assert str(shmserve.models.get("scaler")) == str(m)


def test_model_load_model_dispatches_to_its_adapter(home: Path) -> None:
    picklable.save_model("scaler", Scaler(5.0))
    assert shmserve.models.get("scaler").load_model().k == 5.0
