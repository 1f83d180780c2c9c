"""Tests that need an NVIDIA GPU (marked `gpu`; skipped with the reason on other hosts).

They exercise the real driver calls the CPU tests fake: IPC export/open across
two processes (spawned: CUDA forbids fork after init), page-locking a shared
mapping and copying out of it, the gather kernel against torch.cat, and CUDA
tensors through a real runner worker (the transport's `{"G": handle}` path).
"""
from __future__ import annotations

import importlib.util
import mmap
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

import shmserve
from shmserve.strategy import visible_gpus


def _skip_reason() -> str | None:
    # /dev/nvidiactl too: a VM or container may expose the GPU without /proc/driver/nvidia/gpus.
    if not visible_gpus() and (os.environ.get("CUDA_VISIBLE_DEVICES") is not None or not os.path.exists("/dev/nvidiactl")):
        return "no NVIDIA GPU visible (no /proc/driver/nvidia/gpus entries or CUDA_VISIBLE_DEVICES empty)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no usable CUDA (CPU-only build or driver mismatch)"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

N = 1 << 16


def _producer(conn) -> None:
    import torch

    import shmserve.gpu as gpu

    big = torch.zeros(4 * N, device="cuda")
    x = big[1000: 1000 + N]  # a sub-block: the handle must name the allocation base plus an offset
    x.copy_(torch.arange(N, device="cuda", dtype=torch.float32))
    d = gpu.export_handle(x, consumer_pid=os.getppid())
    del x
    conn.send(d)
    token = conn.recv()
    conn.send((gpu.release(token), gpu.stats()["exports"]))
    # The consumer's result comes back to us by handle, too.
    back = conn.recv()
    y = gpu.open_handle(back)
    conn.send(float(y.sum().item()))
    del y
    deadline = time.monotonic() + 10
    releases = []
    while not releases and time.monotonic() < deadline:
        torch.cuda.synchronize()
        releases = gpu.collect_releases()
    conn.send(releases)
    conn.recv()


def test_ipc_round_trip_between_processes():
    import torch

    import shmserve.gpu as gpu

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_producer, args=(child,))
    proc.start()
    try:
        assert parent.poll(60), "producer did not send a handle"
        d = parent.recv()
        assert d["offset"] >= 1000 * 4 and d["pid"] == proc.pid
        t = gpu.open_handle(d)
        assert t.is_cuda and t.shape == (N,)
        assert torch.equal(t.cpu(), torch.arange(N, dtype=torch.float32))
        del t
        deadline = time.monotonic() + 10
        releases: list = []
        while not releases and time.monotonic() < deadline:
            torch.cuda.synchronize()
            releases = gpu.collect_releases()
        assert releases == [(proc.pid, d["token"])]
        parent.send(d["token"])
        assert parent.poll(30), "producer did not answer the release"
        assert parent.recv() == (True, 0)
        result = torch.full((N,), 2.0, device="cuda")
        back = gpu.export_handle(result, consumer_pid=proc.pid)
        parent.send(back)
        assert parent.poll(60), "producer did not open the result"
        assert parent.recv() == pytest.approx(2.0 * N)
        assert parent.poll(30), "producer did not report its releases"
        (sender, token), = parent.recv()
        assert sender == os.getpid() and token == back["token"]
        assert gpu.release(token) and gpu.stats()["exports"] == 0
        parent.send("bye")
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def test_pinned_arena_copy_to_device():
    import torch

    import shmserve.gpu as gpu

    with mmap.mmap(-1, 1 << 20) as m:
        arena = np.frombuffer(m, dtype=np.float32)
        arena[:] = np.arange(arena.size, dtype=np.float32)
        region = gpu.register_host(m)
        try:
            assert gpu.register_host(m) is region and region.refs == 2
            region.unregister()
            view = arena[1024: 1024 + 64 * 784].reshape(64, 784)
            assert gpu.is_pinned(view)
            out = gpu.to_device(view, 0, require_pinned=True)
            torch.cuda.current_stream().synchronize()
            assert torch.equal(out.cpu(), torch.from_numpy(view.copy()))
            del view
        finally:
            region.unregister()
            del arena  # every numpy view of the mapping must be gone before the mmap closes
        assert not region.registered


def test_gather_kernel_matches_cat():
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    from shmserve.gpu import batch as gpu_batch

    xs = [torch.randn(n, 784, device="cuda") for n in (1, 7, 3, 64)]
    xs.append(torch.randn(9, 784, device="cuda")[:, :].contiguous())
    k = gpu_batch.coalesce(xs, method="kernel")
    c = gpu_batch.coalesce(xs, method="cat")
    assert k.method == "kernel" and torch.equal(k.tensor, c.tensor)
    odd = [torch.arange(n * 3, device="cuda", dtype=torch.uint8).reshape(n, 3) for n in (5, 1, 2)]
    assert torch.equal(gpu_batch.coalesce(odd, method="kernel").tensor, torch.cat(odd))


class CudaEchoRunnable(shmserve.Runnable):
    """Takes and returns CUDA tensors: they cross the transport as IPC handles."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @shmserve.Runnable.method(batchable=False)
    def add1(self, x):
        return x + 1

    @shmserve.Runnable.method(batchable=False)
    def same(self, x):
        return x

    @shmserve.Runnable.method(batchable=False)
    def handoff_stats(self) -> dict:
        import torch

        import shmserve.gpu as gpu

        torch.cuda.synchronize()
        return {**gpu.stats(), "pid": os.getpid()}


def test_cuda_tensors_cross_a_runner_by_handle_and_every_export_is_released(shm_clean):
    import torch

    import shmserve.gpu as gpu

    runner = shmserve.Runner(CudaEchoRunnable, name="cudaecho", workers=1, gpus=(visible_gpus() or ["0"])[:1])
    x = torch.arange(4096, device="cuda", dtype=torch.float32).reshape(64, 64)
    with shmserve.start(runner):
        y = runner.add1.run(x)
        assert y.is_cuda and y.device == x.device and torch.equal(y, x + 1)
        same = runner.same.run(x)
        assert same.data_ptr() == x.data_ptr(), "a returned input must come back as the caller's own memory"
        del y, same
        for _ in range(200):
            runner.add1.run(x)
        # Releases ride on later messages: a few calls without tensors settle both sides.
        deadline = time.monotonic() + 20
        while True:
            torch.cuda.synchronize()
            worker = runner.handoff_stats.run()
            mine = gpu.stats()
            if (worker["exports"] == 0 and mine["exports"] == 0 and mine["pending_releases"] == 0) or time.monotonic() > deadline:
                break
        assert (mine["exports"], worker["exports"], mine["pending_releases"]) == (0, 0, 0), (mine, worker)
        assert worker["import_opens"] == 1, "the worker maps the caller's block once"
