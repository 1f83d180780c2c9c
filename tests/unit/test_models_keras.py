"""Keras 3 adapter (torch backend), in process, compared with the model called directly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import shmserve  # noqa: E402
from tests.tiny_models import keras_mlp  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_keras_format_round_trip_and_runner(home: Path) -> None:
    model = keras_mlp()
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    want = model.predict(x, verbose=0)
    stored = shmserve.keras.save_model("mlp", model, signatures={"predict": {"batchable": True}, "__call__": {}})
    assert stored.options["backend"] == keras.backend.backend() and stored.options["trusted_only"] is False
    np.testing.assert_allclose(shmserve.keras.load_model("mlp").predict(x, verbose=0), want, rtol=1e-6)
    runner = stored.to_runner()
    assert runner.runnable_class.DEFAULT_METHOD == "predict"
    runner.init_local(quiet=True)
    np.testing.assert_allclose(runner.run(x), want, rtol=1e-6)
    got = runner.__call__.run(x)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(x)), rtol=1e-6)


def test_lambda_layers_are_refused_on_load(home: Path) -> None:
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    shmserve.keras.save_model("lam", model)
    with pytest.raises(ValueError, match="(?i)lambda|safe_mode"):
        shmserve.keras.load_model("lam")  # safe_mode: no Python code from the file runs


def test_not_a_keras_model(home: Path) -> None:
    with pytest.raises(TypeError, match="keras.Model"):
        shmserve.keras.save_model("mlp", object())


def test_a_process_without_keras_backend_loads_with_the_saved_one(home: Path) -> None:
    # Keras reads KERAS_BACKEND once, at its first import; without it (and without TensorFlow) it cannot start.
    stored = shmserve.keras.save_model("mlp", keras_mlp())
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(home / "keras_home")  # no keras.json choosing a backend either
    code = (
        "import sys, shmserve\n"
        "model = shmserve.keras.load_model(sys.argv[1], home=sys.argv[2])\n"
        "import keras\n"
        "print(keras.backend.backend(), type(model).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(stored), str(home)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-2:] == [stored.options["backend"], "Functional"]
