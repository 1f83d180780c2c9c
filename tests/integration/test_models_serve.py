"""Each adapter end to end: save, list, get, serve through shared memory, compare with the model called directly."""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmserve

pytestmark = pytest.mark.integration


def _shm_names(pids: set[int]) -> set[str]:
    """shmserve names in /dev/shm created by `pids` (names embed the creator's pid;
    other engineers' tests may be creating their own names on this host meanwhile)."""
    prefixes = tuple(f"shmserve_{pid}_" for pid in pids)
    try:
        return {n for n in os.listdir("/dev/shm") if n.removeprefix("sem.").startswith(prefixes)}
    except OSError:
        return set()


def _children() -> set[int]:
    me = str(os.getpid())
    kids: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] != me or fields[0] == "Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" in f.read():
                    continue  # multiprocessing's helper lives as long as this process, by design
        except OSError:
            continue
        kids.add(int(pid))
    return kids


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    kids_before = _children()
    yield tmp_path / "home"
    assert not (_children() - kids_before), "test left child processes"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _serve(model: Any, check: Any, **to_runner: Any) -> None:
    """Start one worker for the stored model, run `check(runner)`, stop it."""
    runner = model.to_runner(name=_name(model.name.replace("_", "-")), **to_runner)
    pids = {os.getpid()}
    before = _shm_names(pids)
    with shmserve.start(runner, workers=1):
        pids |= _children()
        check(runner)
    import gc

    gc.collect()  # results leased from shared memory are released when collected
    assert not (_shm_names(pids) - before), "serving leaked shared-memory names"


def _concurrently(fn: Any, inputs: list[Any]) -> list[Any]:
    """Call fn on every input from its own thread so the runner can batch them."""
    results: list[Any] = [None] * len(inputs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(inputs[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_pytorch_served(home: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    shmserve.pytorch.save_model(
        "demo_mnist", model, signatures={"predict": {"batchable": True, "batch_dim": 0}}, labels={"owner": "ml"}
    )
    assert [m.name for m in shmserve.models.list()] == ["demo_mnist"]
    stored = shmserve.pytorch.get("demo_mnist:latest")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 784), dtype=np.float32) for n in (1, 3, 1, 5, 2, 1, 4, 1)]
    with torch.no_grad():
        want = [model(torch.from_numpy(x)).numpy() for x in xs]

    def check(runner: Any) -> None:
        got = runner.predict.run(xs[1])
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want[1], rtol=1e-4, atol=1e-5)
        got_t = runner.predict.run(torch.from_numpy(xs[3]))
        assert isinstance(got_t, torch.Tensor)  # torch in, torch out
        np.testing.assert_allclose(got_t.numpy(), want[3], rtol=1e-4, atol=1e-5)
        for g, w in zip(_concurrently(runner.predict.run, xs), want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)

    _serve(stored, check, max_batch_size=16, max_latency_ms=5)


def test_sklearn_served(home: Path) -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 4))
    clf = LogisticRegression().fit(x, (x[:, 0] - x[:, 2] > 0).astype(np.int64))
    shmserve.sklearn.save_model("spam", clf, signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}})
    assert [m.framework for m in shmserve.models.list()] == ["sklearn"]

    def check(runner: Any) -> None:
        np.testing.assert_array_equal(runner.predict.run(x[:7]), clf.predict(x[:7]))
        np.testing.assert_allclose(runner.predict_proba.run(x[7:20]), clf.predict_proba(x[7:20]))
        parts = [x[i : i + 3] for i in range(0, 24, 3)]
        for g, part in zip(_concurrently(runner.predict_proba.run, parts), parts, strict=True):
            np.testing.assert_allclose(g, clf.predict_proba(part))

    _serve(shmserve.sklearn.get("spam"), check)


def test_onnx_served(home: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    shmserve.onnx.save_model("tiny", proto, signatures={"run": {"batchable": True, "batch_dim": 0}})
    x = rng.standard_normal((9, 6)).astype(np.float32)

    def check(runner: Any) -> None:
        np.testing.assert_allclose(runner.run.run(x), x @ w, rtol=1e-5, atol=1e-5)
        parts = [x[i : i + 1] for i in range(9)]
        for g, part in zip(_concurrently(runner.run.run, parts), parts, strict=True):
            np.testing.assert_allclose(g, part @ w, rtol=1e-5, atol=1e-5)

    _serve(shmserve.onnx.get("tiny"), check)


class Affine:
    """A plain Python model for the picklable adapter (module level: picklable by reference)."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.a * x + self.b

    def describe(self, unit: str) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "unit": unit}


def test_picklable_served(home: Path) -> None:
    obj = Affine(2.0, 1.0)
    shmserve.picklable.save_model("affine", obj, signatures={"predict": {"batchable": True}, "describe": {}})
    x = np.arange(12, dtype=np.float64).reshape(4, 3)

    def check(runner: Any) -> None:
        np.testing.assert_array_equal(runner.predict.run(x), obj(x))
        assert runner.describe.run("m") == obj.describe("m")

    _serve(shmserve.picklable.get("affine"), check)


def test_exported_model_serves_after_import(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    obj = Affine(3.0, -1.0)
    shmserve.picklable.save_model("affine", obj, signatures={"predict": {"batchable": True}})
    archive = shmserve.models.export_model("affine", tmp_path)
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "other_home"))
    assert shmserve.models.list() == []
    imported = shmserve.models.import_model(archive)
    # Workers find the model in the store it came from, whatever their own SHMSERVE_HOME says.
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "empty_home"))
    x = np.ones((2, 2))

    def check(runner: Any) -> None:
        np.testing.assert_array_equal(runner.predict.run(x), obj(x))

    _serve(imported, check)
