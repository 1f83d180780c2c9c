"""ONNX adapter, in process, on a tiny graph built here with onnx.helper."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import shmserve  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tiny_linear(w: np.ndarray, b: np.ndarray) -> "onnx.ModelProto":
    """y = relu(x @ w + b), batch dimension dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)


def test_save_load_and_runner(home: Path, tmp_path: Path) -> None:
    w, b = weights()
    proto = tiny_linear(w, b)
    stored = shmserve.onnx.save_model("tiny", proto, signatures={"run": {"batchable": True, "batch_dim": 0}})
    assert stored.framework == "onnx" and stored.options["trusted_only"] is False
    assert shmserve.onnx.load_model("tiny").SerializeToString() == proto.SerializeToString()

    runner = shmserve.onnx.get("tiny").to_runner(max_batch_size=32)
    runner.init_local()
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    want = np.maximum(x @ w + b, 0)
    np.testing.assert_allclose(runner.run.run(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.run.run(x.astype(np.float64)), want, rtol=1e-5, atol=1e-6)  # cast
    np.testing.assert_allclose(runner.run.run(x=x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="no input 'z'"):
        runner.run.run(z=x)

    path = tmp_path / "tiny.onnx"
    onnx.save(proto, str(path))
    from_path = shmserve.onnx.save_model("tiny", path)
    assert from_path.version > stored.version


def test_only_run_signature_and_valid_models(home: Path) -> None:
    w, b = weights()
    with pytest.raises(ValueError, match="'run'"):
        shmserve.onnx.save_model("tiny", tiny_linear(w, b), signatures={"predict": {}})
    with pytest.raises(Exception):  # noqa: B017 - onnx raises its own decode/checker errors
        shmserve.onnx.save_model("tiny", b"not an onnx model")
    assert shmserve.models.list() == []
