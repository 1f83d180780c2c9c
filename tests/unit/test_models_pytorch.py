"""PyTorch adapter, in process (serving through shared memory is in tests/integration)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import shmserve  # noqa: E402
from shmserve.models import pytorch  # noqa: E402


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 3)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.drop(torch.relu(self.body(x))))

    def embed(self, x):  # type: ignore[no-untyped-def]
        return torch.relu(self.body(x))


def make_model() -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads()


def test_save_load_pickle_format(home: Path) -> None:
    model = make_model()
    stored = shmserve.pytorch.save_model(
        "two_heads", model, signatures={"predict": {"batchable": True, "batch_dim": 0}, "embed": {}},
        labels={"owner": "ml"}, metadata={"acc": 0.98},
    )
    assert stored.framework == "pytorch"
    assert stored.info["framework"]["version"] == torch.__version__
    assert stored.options["format"] == "pickle" and stored.options["trusted_only"] is True
    assert stored.options["serializer"] == "pickle"  # TwoHeads is importable: saved by reference
    x = torch.randn(5, 8)
    loaded = shmserve.pytorch.load_model("two_heads:latest")
    assert isinstance(loaded, TwoHeads)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_state_dict_loads_with_weights_only(home: Path) -> None:
    model = make_model()
    stored = shmserve.pytorch.save_model("two_heads", model)
    state = torch.load(stored.path_of("weights.pt"), weights_only=True)
    assert set(state) == set(model.state_dict())
    fresh = pytorch.load_model("two_heads", module=TwoHeads())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_runner_local_numpy_and_torch(home: Path) -> None:
    model = make_model()
    shmserve.pytorch.save_model("two_heads", model, signatures={"predict": {"batchable": True}, "embed": {}})
    runner = shmserve.pytorch.get("two_heads").to_runner(max_batch_size=16)
    assert runner.runnable_class.SUPPORTED_RESOURCES == ("cpu", "nvidia.com/gpu")
    runner.init_local()
    model.eval()  # the runner serves in eval mode: dropout off
    x = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        want_embed = model.embed(torch.from_numpy(x)).numpy()
    got = runner.predict.run(x)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got_t = runner.predict.run(torch.from_numpy(x))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.embed.run(x), want_embed, rtol=1e-5, atol=1e-6)


def test_read_only_batch_view_is_accepted_without_warning(home: Path) -> None:
    shmserve.pytorch.save_model("two_heads", make_model())
    runner = shmserve.pytorch.get("two_heads").to_runner()
    runner.init_local()
    x = np.ones((2, 8), dtype=np.float32)
    x.flags.writeable = False  # batches read from shared memory may be read-only views
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runner.__call__.run(x).shape == (2, 3)


def test_threads_follow_omp_num_threads(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shmserve.pytorch.save_model("two_heads", make_model())
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        runner = shmserve.pytorch.get("two_heads").to_runner()
        runner.init_local()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_torchscript_and_export_formats(home: Path) -> None:
    model = make_model().eval()
    x = torch.randn(3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    ts = shmserve.pytorch.save_model("ts", scripted)
    assert ts.options["format"] == "torchscript" and ts.options["trusted_only"] is False
    assert not ts.path_of("weights.pt").exists()

    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    ex = shmserve.pytorch.save_model("exported", program)
    assert ex.options["format"] == "export"

    with torch.no_grad():
        want = model(x).numpy()
    for name in ("ts", "exported"):
        runner = shmserve.pytorch.get(name).to_runner()
        runner.init_local()
        np.testing.assert_allclose(runner.__call__.run(x.numpy()), want, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="forward"):
        shmserve.pytorch.save_model("ts", scripted, signatures={"embed": {}})
    with pytest.raises(ValueError, match="no separate state dict"):
        pytorch.load_model("ts", module=TwoHeads())


def test_save_rejects_non_modules_and_missing_methods(home: Path) -> None:
    with pytest.raises(TypeError, match="picklable"):
        shmserve.pytorch.save_model("f", lambda x: x)
    with pytest.raises(ValueError, match="decode"):
        shmserve.pytorch.save_model("m", make_model(), signatures={"decode": {}})
    assert shmserve.models.list() == []


class Classifier(torch.nn.Module):
    """A module whose own `predict` differs from `forward`, as BentoML users write them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.linear(x)

    def predict(self, x):  # type: ignore[no-untyped-def]
        return self.forward(x).argmax(dim=1)


def test_predict_signature_calls_the_modules_own_predict(home: Path) -> None:
    torch.manual_seed(0)
    model = Classifier().eval()
    shmserve.pytorch.save_model("clf", model, signatures={"predict": {"batchable": True}, "forward": {}})
    runner = shmserve.pytorch.get("clf").to_runner()
    runner.init_local()
    x = torch.randn(3, 8)
    with torch.no_grad():
        want_classes, want_logits = model.predict(x), model(x)
    got = runner.predict.run(x)
    assert got.shape == (3,)  # the classes, not forward's (3, 10) logits
    torch.testing.assert_close(got, want_classes)
    torch.testing.assert_close(runner.forward.run(x), want_logits)


def test_default_signatures_are_call_plus_the_modules_own_predict(home: Path) -> None:
    plain = shmserve.pytorch.save_model("two_heads", make_model())
    assert list(plain.signatures) == ["__call__"]
    with_predict = shmserve.pytorch.save_model("clf", Classifier())
    assert sorted(with_predict.signatures) == ["__call__", "predict"]
    for stored in (plain, with_predict):
        assert stored.to_runner().runnable_class.DEFAULT_METHOD == "__call__"
