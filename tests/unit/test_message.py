import numpy as np
import pytest

from shmserve.errors import InvalidInput
from shmserve.shm.message import decode_call, decode_result, encode_call, encode_result, layout
from shmserve.tensors import numpy_dtype
from shmserve.tensors import to_wire as as_array


def test_single_tensor_call_has_no_metadata():
    x = np.ones((2, 3), np.float32)
    tensors, meta = encode_call((x,), {})
    assert meta == b"" and tensors[0][0] is x
    args, kwargs = decode_call(["T"], meta)
    assert args == ["T"] and kwargs == {}


def test_mixed_call_roundtrip():
    a, b = np.ones(3), np.zeros((2, 2), np.int64)
    tensors, meta = encode_call((a, 5, "s"), {"b": b, "opt": {"k": [1, 2]}, "f": np.float32(1.5)})
    assert [t[0] for t in tensors] == [a, b] or len(tensors) == 2
    args, kwargs = decode_call(["A", "B"], meta)
    assert args == ["A", 5, "s"]
    assert kwargs == {"b": "B", "opt": {"k": [1, 2]}, "f": 1.5}


def test_object_dtype_is_refused():
    with pytest.raises(InvalidInput, match="object"):
        encode_call((np.array([object()], dtype=object),), {})


def test_nested_tensor_is_refused():
    with pytest.raises(InvalidInput, match="top-level"):
        encode_call(([np.ones(2)],), {})


def test_unserializable_value_is_refused():
    with pytest.raises(InvalidInput, match="set"):
        encode_call((np.ones(1), {1, 2}), {})


def test_result_structures_roundtrip():
    a, b = np.ones(2), np.zeros(3)
    for value in (a, (a, b), [a, 1], {"x": a, "y": "z"}, {"plain": 1}, 3.5, None):
        tensors, meta = encode_result(value)
        rebuilt = decode_result([t[0] for t in tensors], meta)
        if isinstance(value, np.ndarray):
            assert rebuilt is a
        elif isinstance(value, tuple):
            assert isinstance(rebuilt, tuple) and rebuilt[0] is a and rebuilt[1] is b
        elif isinstance(value, list):
            assert rebuilt[0] is a and rebuilt[1] == 1
        elif isinstance(value, dict) and "x" in value:
            assert rebuilt["x"] is a and rebuilt["y"] == "z"
        else:
            assert rebuilt == value


def test_layout_aligns_each_tensor_to_its_itemsize():
    t8 = as_array(np.ones(3, np.float64), "a")
    t1 = as_array(np.ones(3, np.uint8), "b")
    offsets, end = layout([t1, t8], 0)
    assert offsets == [0, 8] and end == 32


def test_big_endian_is_sent_little_endian():
    arr, _kind, dtype = as_array(np.ones(2, ">f4"), "x")
    assert dtype == "<f4" and numpy_dtype(dtype) == np.dtype("<f4")


def test_torch_tensor_kind():
    torch = pytest.importorskip("torch")
    arr, kind, dtype = as_array(torch.ones(2, 2), "x")
    assert kind == 1 and dtype == "<f4" and arr.shape == (2, 2)
    arr, kind, dtype = as_array(torch.ones(2, dtype=torch.bfloat16), "x")
    assert dtype == "bf16" and arr.dtype == np.int16


class FakeLedger:
    """Stands in for shmserve.gpu.HandoffLedger: device tensors become handle dicts."""

    def __init__(self):
        self.encoded, self.taken = [], []

    def encode(self, value, peer_pid=None):
        self.encoded.append(value)
        return {"handle": len(self.encoded) - 1}

    def decode(self, value, copy=False):
        return ("opened", value["handle"])

    def take_back(self, tokens):
        self.taken.extend(tokens)


@pytest.fixture
def meta_is_device(monkeypatch):
    """Treat torch 'meta' tensors as CUDA tensors, so the hand-off path runs without a GPU."""
    from shmserve.shm import message

    real = message.is_device_tensor
    monkeypatch.setattr(message, "is_device_tensor", lambda x: getattr(getattr(x, "device", None), "type", "") == "meta" or real(x))


def test_device_tensors_travel_as_handles_never_as_bytes(meta_is_device):
    torch = pytest.importorskip("torch")
    dev = torch.empty(2, 3, device="meta")  # not a CPU tensor: must take the hand-off path
    ledger = FakeLedger()
    tensors, meta = encode_call((dev, np.ones(2)), {"k": 1}, device=lambda: ledger, releases=[7, 8])
    assert len(tensors) == 1 and ledger.encoded == [dev]  # only the CPU array is copied
    worker = FakeLedger()
    args, kwargs = decode_call(["cpu"], meta, device=lambda: worker)
    assert args == [("opened", 0), "cpu"] and kwargs == {"k": 1}
    assert worker.taken == [7, 8]
    tensors, meta = encode_result((dev, np.zeros(1)), device=lambda: worker, releases=[3])
    back = decode_result([t[0] for t in tensors], meta, device=lambda: ledger)
    assert back[0] == ("opened", 0) and ledger.taken == [3]


def test_device_tensor_without_gpu_transport_is_a_clear_error(meta_is_device):
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidInput, match="GPU transport"):
        encode_call((torch.empty(1, device="meta"), 1), {})


def test_other_devices_are_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidInput, match="only CPU and CUDA"):
        encode_call((torch.empty(1, device="meta"), 1), {})
