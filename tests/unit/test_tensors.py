"""shmserve.tensors: the one registry of tensor kinds (detection, wire, HTTP, join/split, limits)."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shmserve import tensors
from shmserve.errors import InvalidInput
from shmserve.tensors import CUPY, HTTP, NUMPY, TORCH, TORCH_CUDA, TRANSPORT

ROOT = Path(__file__).resolve().parents[2]


class _Device:
    def __init__(self, type_: str) -> None:
        self.type = type_


def _fake_frameworks(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """Stand-ins for torch and CuPy in sys.modules: what detection sees once a framework is loaded."""
    torch = types.ModuleType("torch")
    cupy = types.ModuleType("cupy")

    class Tensor:
        def __init__(self, device: str, data: Any = (1.0, 2.0)) -> None:
            self.device = _Device(device)
            self.data = np.asarray(data)

        def detach(self) -> "Tensor":
            return self

        def cpu(self) -> "Tensor":
            return self

        def numpy(self) -> np.ndarray:
            return self.data

        def tolist(self) -> Any:
            return self.data.tolist()

    class ndarray:  # noqa: N801 (CuPy's name)
        def get(self) -> np.ndarray:
            return np.array([3, 4])

    torch.Tensor = Tensor  # type: ignore[attr-defined]
    cupy.ndarray = ndarray  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return Tensor, ndarray


def test_each_kind_is_detected_from_the_loaded_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    Tensor, CupyArray = _fake_frameworks(monkeypatch)
    assert tensors.kind_of(np.zeros(2)) is NUMPY
    assert tensors.kind_of(Tensor("cpu")) is TORCH
    assert tensors.kind_of(Tensor("cuda")) is TORCH_CUDA
    assert tensors.kind_of(CupyArray()) is CUPY
    assert tensors.kind_of([1, 2]) is None and tensors.kind_of(b"x") is None
    assert [tensors.is_device(x) for x in (np.zeros(1), Tensor("cpu"), Tensor("cuda"), CupyArray())] == [
        False, False, True, True]
    assert tensors.to_numpy(CupyArray()).tolist() == [3, 4] and tensors.to_list(Tensor("cuda")) == [1.0, 2.0]


def test_detection_imports_no_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)

    class Tensor:  # looks like torch's, but torch is not loaded: it cannot be one of torch's
        device = _Device("cuda")

    for value in (Tensor(), object(), [np.zeros(1)]):
        assert tensors.kind_of(value) is None and not tensors.is_device(value)
    assert "torch" not in sys.modules and "cupy" not in sys.modules


@pytest.mark.parametrize("dtype", ["float32", ">f8", "int8", "uint64", "bool", "complex64", "float16"])
def test_numpy_round_trips_through_the_wire(dtype: str) -> None:
    x = np.arange(12).reshape(3, 4).astype(dtype)
    arr, kind, dtype_str = tensors.to_wire(x, "argument 0")
    assert kind == tensors.KIND_NUMPY and len(dtype_str.encode()) <= 8
    arena = np.empty(arr.shape, tensors.numpy_dtype(dtype_str))  # what the arena holds: the header's dtype
    arena[...] = arr
    back = tensors.from_wire(arena, kind, dtype_str)
    np.testing.assert_array_equal(back, x)


def test_torch_round_trips_through_the_wire_as_torch() -> None:
    torch = pytest.importorskip("torch")
    for t in (torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.tensor([1.5, -2.0], dtype=torch.bfloat16)):
        arr, kind, dtype_str = tensors.to_wire(t, "argument 0")
        back = tensors.from_wire(arr, kind, dtype_str)
        assert tensors.kind_of(back) is TORCH and back.dtype == t.dtype and torch.equal(back, t)
    f = torch.arange(4.0)
    assert np.shares_memory(tensors.to_wire(f, "x")[0], f.numpy())  # no copy


@pytest.mark.parametrize(("value", "says"), [
    (np.array(["a", "b"]), "cannot cross the transport"),
    (np.array([object()]), "cannot cross the transport"),
    (np.zeros((1,) * 9), "up to 8 dimensions"),
])
def test_the_transport_refuses_what_its_limits_exclude(value: np.ndarray, says: str) -> None:
    with pytest.raises(InvalidInput, match=f"argument 0: .*{says}"):
        tensors.to_wire(value, "argument 0")


def test_the_limits_are_the_declared_ones_and_differ_as_documented() -> None:
    from shmserve import npy
    from shmserve.shm import wire

    assert TRANSPORT.max_ndim == wire.MAX_NDIM
    assert wire.TENSOR_HEADER.format.endswith(f"{TRANSPORT.max_ndim}q")  # the header's shape slots
    assert HTTP.max_ndim == npy.MAX_NDIM == 32
    assert HTTP.dtype_kinds - TRANSPORT.dtype_kinds == {"S", "U"}  # strings: HTTP bodies only
    npy.check_dtype(np.dtype("<U7"))  # an HTTP body may hold strings ...
    with pytest.raises(InvalidInput):
        tensors.to_wire(np.array(["abc"]), "argument 0")  # ... the transport does not carry them
    doc = tensors.__doc__ or ""
    assert "<U1234567" in doc and "32 dimensions" in doc and "8 shape slots" in doc


def test_join_and_split_along_a_dim() -> None:
    a, b = np.arange(6.0).reshape(2, 3), np.arange(3.0).reshape(1, 3)
    joined = tensors.join([a, b], 0)
    np.testing.assert_array_equal(joined, np.concatenate([a, b]))
    parts = tensors.split(joined, [2, 1], 0)
    np.testing.assert_array_equal(parts[0], a)
    np.testing.assert_array_equal(parts[1], b)
    assert all(np.shares_memory(p, joined) for p in parts)
    cols = tensors.join([a.T, b.T], 1)
    assert cols.shape == (3, 3) and [p.shape for p in tensors.split(cols, [2, 1], dim=1)] == [(3, 2), (3, 1)]
    assert tensors.join([a]) is a


def test_join_and_split_torch() -> None:
    torch = pytest.importorskip("torch")
    xs = [torch.ones(2, 3), torch.zeros(1, 3)]
    joined = tensors.join(xs, 0)
    assert tensors.kind_of(joined) is TORCH and joined.shape == (3, 3)
    first, second = tensors.split(joined, [2, 1])
    assert torch.equal(first, xs[0]) and first.data_ptr() == joined.data_ptr()


def test_join_and_split_refuse_what_cannot_batch() -> None:
    with pytest.raises(TypeError, match="one kind"):
        tensors.join([np.zeros((1, 2)), [[0.0, 0.0]]])
    with pytest.raises(ValueError, match="one dtype"):
        tensors.join([np.zeros((1, 2)), np.zeros((1, 2), np.float32)])
    with pytest.raises(ValueError, match="may differ only along dim 0"):
        tensors.join([np.zeros((1, 2)), np.zeros((1, 3))])
    with pytest.raises(ValueError, match=r"method 'f' has shape \(3, 2\), but the batch joined 4 items"):
        tensors.split(np.zeros((3, 2)), [2, 2], 0, what="method 'f'")
    with pytest.raises(ValueError, match="one output item per input item"):
        tensors.split(np.zeros(3), [1, 2], dim=1)


def test_no_other_module_asks_what_kind_a_tensor_is() -> None:
    asks = re.compile(r"isinstance\([^)]*(torch\.Tensor|cupy\.ndarray)|__module__\.startswith\(\"(torch|cupy)|\.is_cuda\b")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "shmserve").rglob("*.py")
                 if p.name != "tensors.py" and "models" not in p.parts and asks.search(p.read_text())]
    assert offenders == []
