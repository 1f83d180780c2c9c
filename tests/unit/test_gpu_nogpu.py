"""shmserve.gpu on a host without a GPU: imports lazily, fails clearly, batches CPU tensors by logic alone."""
from __future__ import annotations

import mmap
import subprocess
import sys

import numpy as np
import pytest

import shmserve.gpu as gpu
from shmserve.gpu import batch as batch_mod
from shmserve.gpu import driver as driver_mod
from shmserve.gpu.frameworks import require

NO_GPU = not gpu.available()


def test_importing_shmserve_gpu_imports_no_framework_and_no_driver():
    # A fresh interpreter: the test process itself may already hold torch.
    code = (
        "import sys, numpy as np, shmserve.gpu as g\n"
        "assert not g.is_device_tensor(np.zeros(3)) and not g.is_device_tensor([1])\n"
        "assert g.is_handle_dict({'__cuda_ipc__': 1})\n"
        "bad = [m for m in ('torch', 'cupy') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import ctypes\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_cpu_tensors_are_not_device_tensors():
    torch = pytest.importorskip("torch")
    assert not gpu.is_device_tensor(torch.zeros(3))
    with pytest.raises(TypeError, match="torch CUDA tensor or a CuPy array"):
        gpu.export_handle(torch.zeros(3))


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU error path")
def test_gpu_functions_name_the_missing_driver():
    assert gpu.available() is False
    with pytest.raises(gpu.GpuUnavailable, match="libcuda|no CUDA device"):
        driver_mod.load()
    with pytest.raises(gpu.GpuUnavailable, match="libcuda|no CUDA device"):
        gpu.register_host(bytearray(4096))
    with pytest.raises(gpu.GpuUnavailable, match="libcuda|no CUDA device"):
        gpu.to_device(np.zeros(4, dtype=np.float32))
    with pytest.raises(gpu.GpuUnavailable, match="libcuda|no CUDA device"):
        gpu.open_handle(
            gpu.DeviceHandle(
                kind="torch", pid=1, sender=1, token=1, device=0, device_uuid=b"u" * 16, mem_handle=b"m" * 64,
                alloc_size=64, offset=0, shape=(4,), strides=(1,), dtype="float32", event_handle=None,
            ).to_dict()
        )
    assert gpu.GpuUnavailable.http_status == 503


def test_zero_size_and_non_contiguous_registrations_are_refused_before_cuda():
    with pytest.raises(ValueError, match="zero-size"):
        gpu.register_host(bytearray(0))
    with pytest.raises(ValueError, match="contiguous"):
        gpu.register_host(np.zeros((64, 64), dtype=np.uint8)[:, ::2])
    with mmap.mmap(-1, 4096) as m, pytest.raises(ValueError, match="zero-size"):
        gpu.register_host(memoryview(m)[:0])


def test_to_device_checks_its_input_before_touching_cuda():
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.to_device(np.zeros((4, 4), dtype=np.float32).T)
    with pytest.raises(ValueError, match="cannot be copied"):
        gpu.to_device(np.zeros(3, dtype=object))


def test_missing_frameworks_are_named_with_the_fix():
    if "cupy" not in sys.modules:
        try:
            import cupy  # noqa: F401
        except ImportError:
            with pytest.raises(gpu.GpuUnavailable, match=r"cupy is not installed.*shmserve\[cupy\]"):
                require("cupy")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(gpu.GpuUnavailable, match="cannot use CUDA"):
            require("torch")
    with pytest.raises(ValueError, match="unknown device tensor kind"):
        require("jax")


# -- batching logic ------------------------------------------------------------------


def test_plan_checks_shapes_and_computes_the_batch():
    assert batch_mod.plan([(2, 784), (1, 784), (5, 784)], 0) == ((2, 1, 5), (8, 784))
    assert batch_mod.plan([(3, 2, 4), (3, 1, 4)], -2) == ((2, 1), (3, 3, 4))
    with pytest.raises(ValueError, match="differ only along dim 0"):
        batch_mod.plan([(2, 784), (2, 10)], 0)
    with pytest.raises(ValueError, match="out of range"):
        batch_mod.plan([(2,)], 1)
    with pytest.raises(ValueError, match="zero tensors"):
        batch_mod.plan([], 0)


@pytest.mark.parametrize(
    "method, dim, contiguous, have_cupy, expected",
    [
        ("auto", 0, True, True, "kernel"),
        ("auto", 0, True, False, "cat"),
        ("auto", 1, True, True, "cat"),
        ("auto", 0, False, True, "cat"),
        ("cat", 0, True, True, "cat"),
        ("kernel", 0, True, True, "kernel"),
    ],
)
def test_choose_method(method, dim, contiguous, have_cupy, expected):
    assert batch_mod.choose_method(method, "torch", dim, contiguous, have_cupy) == expected


def test_choose_method_explains_why_the_kernel_cannot_run():
    with pytest.raises(ImportError, match="needs CuPy"):
        batch_mod.choose_method("kernel", "torch", 0, True, False)
    with pytest.raises(ValueError, match="dim 0 only"):
        batch_mod.choose_method("kernel", "torch", 1, True, True)
    with pytest.raises(ValueError, match="unknown batching method"):
        batch_mod.choose_method("fast", "torch", 0, True, True)
    with pytest.raises(FileNotFoundError, match="SHMSERVE_CUDA_DIR"):
        batch_mod.choose_method("kernel", "torch", 0, True, True, have_source=False)


def test_auto_falls_back_to_cat_without_the_kernel_source():
    # A wheel install has no cuda/ folder: "auto" must not pick a kernel it cannot compile.
    assert batch_mod.choose_method("auto", "torch", 0, True, True, have_source=False) == "cat"


def test_split_returns_views_that_share_the_output_memory():
    out = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    parts = batch_mod.split(out, [2, 1, 5])
    assert [p.shape for p in parts] == [(2, 3), (1, 3), (5, 3)]
    assert all(np.shares_memory(p, out) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), out)
    cols = batch_mod.split(out.T, [2, 6], dim=1)
    assert [c.shape for c in cols] == [(3, 2), (3, 6)] and np.shares_memory(cols[1], out)
    with pytest.raises(ValueError, match="one output item per input item"):
        batch_mod.split(out, [2, 2])


def test_coalesce_torch_tensors_with_cat_and_split_back_without_copies():
    torch = pytest.importorskip("torch")
    xs = [torch.full((n, 4), float(i)) for i, n in enumerate((2, 3, 1))]
    b = batch_mod.coalesce(xs, dim=0, method="cat")
    assert b.method == "cat" and b.sizes == (2, 3, 1) and tuple(b.tensor.shape) == (6, 4)
    out = b.tensor * 10
    parts = b.split(out)
    for i, p in enumerate(parts):
        assert p.data_ptr() >= out.data_ptr() and p.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        assert torch.equal(p, xs[i] * 10)
    single = batch_mod.coalesce(xs[:1])
    assert single.tensor is xs[0] and single.method == "none"


def test_coalesce_refuses_mixed_inputs():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="one device and dtype"):
        batch_mod.coalesce([torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.float64)], method="cat")
    with pytest.raises(TypeError, match="torch tensors or CuPy arrays"):
        batch_mod.coalesce([np.zeros((1, 2)), np.zeros((1, 2))])


def test_env_switch_selects_the_method(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("SHMSERVE_GPU_BATCH", "kernel")
    xs = [torch.zeros(1, 2), torch.zeros(1, 2)]
    if not batch_mod._have_cupy():
        with pytest.raises(ImportError, match="needs CuPy"):
            batch_mod.coalesce(xs)
    monkeypatch.setenv("SHMSERVE_GPU_BATCH", "cat")
    assert batch_mod.coalesce(xs).method == "cat"


def test_root_buffer_finds_the_mapping_behind_a_batch_view():
    with mmap.mmap(-1, 1 << 16) as m:
        arena = np.frombuffer(memoryview(m), dtype=np.float32)
        batch = arena[256: 256 + 64 * 16].reshape(64, 16)[8:]
        assert gpu.root_buffer(batch) is m
        del arena, batch
    assert gpu.root_buffer(np.zeros(4)) is None
    assert gpu.root_buffer(np.zeros(4)[1:]) is None
    raw = bytearray(64)
    assert gpu.root_buffer(np.frombuffer(raw, dtype=np.uint8)[4:]) is raw


def test_cuda_array_interface_describes_strides_in_bytes():
    from shmserve.gpu.frameworks import _CudaArray

    owner = object()
    holder = _CudaArray(0x1000, (4, 3), (1, 4), "<f4", 4, owner)
    cai = holder.__cuda_array_interface__
    assert cai["strides"] == (4, 16) and cai["shape"] == (4, 3) and cai["data"] == (0x1000, False)
    assert cai["version"] == 3 and cai["typestr"] == "<f4" and holder.owner is owner


def test_release_paths_are_no_ops_where_the_gpu_was_never_used():
    # A transport may call these on every message, GPU host or not.
    from shmserve.gpu import ipc

    ipc._STATES.pop(__import__("os").getpid(), None)
    assert gpu.collect_releases() == [] and gpu.sweep() == 0 and gpu.release(123) is False
    gpu.claim(1, 2)
    assert gpu.stats()["exports"] == 0
    ledger = gpu.HandoffLedger()
    assert ledger.owed_to(1) == [] and ledger.peers() == []
    assert ledger.encode((np.zeros(2), {"a": 1}), 5)[1] == {"a": 1}
    assert ledger.decode([1, {"b": "x"}]) == [1, {"b": "x"}]


def test_auto_joins_host_tensors_with_cat_even_where_cupy_is_installed(monkeypatch):
    # The gather kernel reads device memory: "auto" must not hand it CPU tensors on a GPU host.
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(batch_mod, "_have_cupy", lambda: True)
    xs = [torch.zeros(1, 2), torch.ones(2, 2)]
    b = batch_mod.coalesce(xs, method="auto")
    assert b.method == "cat" and torch.equal(b.tensor, torch.cat(xs))
