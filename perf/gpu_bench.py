#!/usr/bin/env python3
"""GPU host measurements of issue 5: IPC hand-off, pinned arenas, batched model end to end.

Run on a host with an NVIDIA GPU, torch (CUDA build) and optionally CuPy::

    python perf/gpu_bench.py              # full run (about 2-4 minutes)
    python perf/gpu_bench.py --quick      # fewer repetitions, 1,000-call leak check
    python perf/gpu_bench.py --only ipc,pinned
    python perf/gpu_bench.py --json perf/results_gpu_h200.json

Every section checks correctness before it times anything (outputs are
poisoned with NaN first and compared with the same work done in-process),
then prints one table and writes ``perf/results/gpu_<UTC time>.json`` (or
``--json``). A section that fails records ``<section>_error`` and the others
still run, so one broken piece does not cost a GPU session all its figures.

Sections and their targets (from the issue):

* ipc     hand-off round trip of a 4 MB and a 256 MB CUDA tensor by IPC
          handle vs copying through host memory; IPC time independent of
          size and >= 50x faster at 256 MB. Also 10,000 calls with device
          memory and outstanding exports checked before and after. The
          handles travel by hand here (`HandoffLedger` on both sides, as
          method arguments): the protocol alone.
* transport the same through the serving path: a CUDA tensor passed to
          ``runner.method.run`` crosses as ``{"G": handle}`` (shm.message),
          releases ride on later messages (client.py, worker/dispatch.py).
* pinned  host-to-device copy of a batch view out of a POSIX shm arena, page-
          locked vs pageable; >= 1.5x the bandwidth.
* e2e     a batched torch MLP on the GPU through shmserve vs the same batches
          in-process; within 10 %.
* batch   device-side coalescing of 64 callers: gather kernel vs torch.cat.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import shmserve  # noqa: E402
import shmserve.gpu as gpu  # noqa: E402

MB = 1 << 20


# -- runnables (module level: spawned workers import them from __mp_main__) ------------


class HandoffRunnable(shmserve.Runnable):
    """Receives a CUDA tensor by handle or by host copy and sends one back."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

    def __init__(self) -> None:
        self.ledger = gpu.HandoffLedger()

    @shmserve.Runnable.method(batchable=False)
    def ipc(self, payload: dict, op: str, releases: list) -> dict:
        """Open `payload`; return the input itself (op 'view') or input + 1 (op 'add1') by handle."""
        self.ledger.take_back(releases)
        x = self.ledger.decode(payload)
        y = x if op == "view" else x + 1
        client = payload["sender"]
        out = self.ledger.encode(y, client)
        del x, y
        return {"handle": out, "releases": self.ledger.owed_to(client), "stats": gpu.stats(), "pid": os.getpid()}

    @shmserve.Runnable.method(batchable=False)
    def flush(self, releases: list, client: int) -> dict:
        """Take back released tokens; report what we owe and what we still hold."""
        import torch

        self.ledger.take_back(releases)
        torch.cuda.synchronize()
        return {"releases": self.ledger.owed_to(client), "stats": gpu.stats(), "pid": os.getpid()}

    @shmserve.Runnable.method(batchable=False)
    def host(self, x: np.ndarray, op: str) -> np.ndarray:
        """The naive path: host bytes to the GPU, (op), back to host bytes."""
        import torch

        t = torch.from_numpy(x).cuda()
        y = t if op == "view" else t + 1
        return y.cpu().numpy()


def build_mlp(seed: int = 0) -> Any:
    """The common workload's MLP shape (784 -> 1024 -> 10), same weights in every process."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    return model.cuda().eval()


class GpuMLPRunnable(shmserve.Runnable):
    """The MLP on the GPU, batchable on dim 0; batch views are DMA'd out of a pinned arena."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

    def __init__(self, pinned: bool = True) -> None:
        self.model = build_mlp()
        self.pinned = pinned

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for a (n, 784) float32 batch."""
        import torch

        if self.pinned:
            gpu.pin_arena_of(x)
        with torch.no_grad():
            y = self.model(gpu.to_device(x, 0))
        return y.cpu().numpy()  # synchronous: the arena range may be reused after return


class TransportRunnable(shmserve.Runnable):
    """CUDA tensors as plain arguments and results: the transport carries the handles."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @shmserve.Runnable.method(batchable=False)
    def same(self, x: Any) -> Any:
        """The input itself: comes back as the caller's own memory."""
        return x

    @shmserve.Runnable.method(batchable=False)
    def add1(self, x: Any) -> Any:
        """A new tensor on the worker's GPU."""
        return x + 1

    @shmserve.Runnable.method(batchable=False)
    def handoff_stats(self) -> dict:
        """This worker's hand-off counts, after its queued GPU work."""
        _sync()
        return gpu.stats()


# -- helpers ------------------------------------------------------------------------------


def _gpus() -> list[str]:
    """The GPU to give each bench runner: named, so a host without /proc/driver/nvidia still serves on it."""
    from shmserve.strategy import visible_gpus

    return (visible_gpus() or ["0"])[:1]


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


class HandoffClient:
    """The client half of the protocol through `HandoffLedger`, by hand until the transport carries handles."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.ledger = gpu.HandoffLedger()
        self.worker = 0  # learnt from the first reply

    def call(self, x: Any, op: str) -> Any:
        payload = self.ledger.encode(x, self.worker or None)
        owed = self.ledger.owed_to(self.worker) if self.worker else []
        reply = self.runner.ipc.run(payload, op, owed)
        self.worker = reply["pid"]
        self.ledger.take_back(reply["releases"])
        return self.ledger.decode(reply["handle"])

    def drain(self, deadline_s: float = 10.0) -> dict[str, Any]:
        """Exchange releases until neither side holds an export or a pending release."""
        end = time.monotonic() + deadline_s
        while True:
            _sync()
            reply = self.runner.flush.run(self.ledger.owed_to(self.worker), os.getpid())
            self.ledger.take_back(reply["releases"])
            _sync()
            mine, theirs = gpu.stats(), reply["stats"]
            settled = not reply["releases"] and not self.ledger.peers() and all(
                s["exports"] == 0 and s["pending_releases"] == 0 for s in (mine, theirs)
            )
            if settled or time.monotonic() > end:
                return {"worker": theirs, "client": mine, "settled": settled}


def section_ipc(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    runner = shmserve.Runner(HandoffRunnable, name="gpu-handoff", workers=1, arena_mb=320, gpus=_gpus())
    with shmserve.start(runner):
        client = HandoffClient(runner)
        for size_mb in (4, 256):
            n = size_mb * MB // 4
            x = torch.randn(n, device="cuda")
            # Correctness first, outputs poisoned.
            for path in ("ipc", "host"):
                dest = torch.full_like(x, float("nan"))
                if path == "ipc":
                    r = client.call(x, "add1")
                else:
                    r = torch.from_numpy(runner.host.run(x.cpu().numpy(), "add1")).cuda()
                dest.copy_(r)
                del r
                _sync()
                if not torch.equal(dest, x + 1):
                    raise SystemExit(f"{path} hand-off of {size_mb} MB returned wrong values")
            view = client.call(x, "view")
            if view.data_ptr() != x.data_ptr():
                raise SystemExit("IPC 'view' did not come back as the caller's own memory")
            del view
            reps = args.reps if size_mb == 4 else max(5, args.reps // 10)
            for path in ("ipc", "host"):
                times = []
                for _ in range(reps + 3):
                    _sync()
                    t0 = time.perf_counter()
                    if path == "ipc":
                        r = client.call(x, "view")
                    else:
                        r = torch.from_numpy(runner.host.run(x.cpu().numpy(), "view")).cuda()
                    _sync()
                    times.append(time.perf_counter() - t0)
                    del r
                out[f"handoff_{path}_{size_mb}MB_ms"] = _median_ms(times[3:])
        out["ipc_size_ratio_256_vs_4"] = out["handoff_ipc_256MB_ms"] / out["handoff_ipc_4MB_ms"]
        out["ipc_speedup_256MB"] = out["handoff_host_256MB_ms"] / out["handoff_ipc_256MB_ms"]

        # Leak check: many calls, device memory and export tables before and after.
        x = torch.randn(MB, device="cuda")  # 4 MB
        client.drain()
        _sync()
        free_before = torch.cuda.mem_get_info()[0]
        alloc_before = torch.cuda.memory_allocated()
        for _ in range(args.leak_calls):
            r = client.call(x, "view")
            del r
        state = client.drain()
        _sync()
        free_after = torch.cuda.mem_get_info()[0]
        out["leak_calls"] = args.leak_calls
        out["leak_device_free_delta_MB"] = (free_before - free_after) / MB
        out["leak_client_allocated_delta_MB"] = (torch.cuda.memory_allocated() - alloc_before) / MB
        out["leak_outstanding_exports"] = state["client"]["exports"] + state["worker"]["exports"]
        out["leak_settled"] = state["settled"]
        out["leak_import_opens_worker"] = state["worker"]["import_opens"]


def section_transport(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    runner = shmserve.Runner(TransportRunnable, name="gpu-transport", workers=1, gpus=_gpus())
    with shmserve.start(runner):
        for size_mb in (4, 256):
            x = torch.randn(size_mb * MB // 4, device="cuda")
            dest = torch.full_like(x, float("nan"))
            r = runner.add1.run(x)
            dest.copy_(r)
            del r
            _sync()
            if not torch.equal(dest, x + 1):
                raise SystemExit(f"transport hand-off of {size_mb} MB returned wrong values")
            r = runner.same.run(x)
            if r.data_ptr() != x.data_ptr():
                raise SystemExit("transport 'same' did not come back as the caller's own memory")
            del r, dest
            reps = args.reps if size_mb == 4 else max(5, args.reps // 10)
            times = []
            for _ in range(reps + 3):
                _sync()
                t0 = time.perf_counter()
                r = runner.same.run(x)
                _sync()
                times.append(time.perf_counter() - t0)
                del r
            out[f"transport_ipc_{size_mb}MB_ms"] = _median_ms(times[3:])
        out["transport_size_ratio_256_vs_4"] = out["transport_ipc_256MB_ms"] / out["transport_ipc_4MB_ms"]
        if "handoff_host_256MB_ms" in out:
            out["transport_speedup_256MB"] = out["handoff_host_256MB_ms"] / out["transport_ipc_256MB_ms"]

        def settle(deadline_s: float = 20.0) -> tuple[dict[str, int], dict[str, int]]:
            # Releases ride on later messages: calls without tensors carry them both ways.
            end = time.monotonic() + deadline_s
            while True:
                _sync()
                worker = runner.handoff_stats.run()
                mine = gpu.stats()
                if (worker["exports"] == 0 and mine["exports"] == 0 and mine["pending_releases"] == 0) \
                        or time.monotonic() > end:
                    return mine, worker

        x = torch.randn(MB, device="cuda")  # 4 MB
        runner.add1.run(x)
        settle()
        free_before = torch.cuda.mem_get_info()[0]
        alloc_before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(args.leak_calls):
            runner.add1.run(x)
        out["transport_add1_4MB_call_us"] = (time.perf_counter() - t0) / args.leak_calls * 1e6
        mine, worker = settle()
        free_after = torch.cuda.mem_get_info()[0]
        out["transport_leak_calls"] = args.leak_calls
        out["transport_leak_device_free_delta_MB"] = (free_before - free_after) / MB
        out["transport_leak_client_allocated_delta_MB"] = (torch.cuda.memory_allocated() - alloc_before) / MB
        out["transport_leak_outstanding_exports"] = mine["exports"] + worker["exports"]
        out["transport_leak_pending_releases"] = mine["pending_releases"] + worker["pending_releases"]
        out["transport_leak_imports_client"] = mine["imports"]
        out["transport_leak_imports_worker"] = worker["imports"]
        out["transport_leak_import_opens_worker"] = worker["import_opens"]
        out["transport_leak_import_opens_client"] = mine["import_opens"]


def section_pinned(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    size = 256 * MB
    batch_bytes = 64 * MB
    shm = shared_memory.SharedMemory(name=f"shmserve_gpubench_{os.getpid()}", create=True, size=size)
    try:
        arena = np.frombuffer(shm.buf, dtype=np.float32)
        arena[:] = np.arange(arena.size, dtype=np.float32) % 9973  # pre-faults every page too
        lo = 3 * MB // 4
        view = arena[lo: lo + batch_bytes // 4].reshape(-1, 1024)

        def measure(label: str, view: np.ndarray) -> None:
            poisoned = torch.full(view.shape, float("nan"), device="cuda")
            poisoned.copy_(gpu.to_device(view, 0))
            _sync()
            if not torch.equal(poisoned.cpu(), torch.from_numpy(view)):
                raise SystemExit(f"{label} host-to-device copy returned wrong values")
            times = []
            for _ in range(args.reps // 4 + 3):
                _sync()
                t0 = time.perf_counter()
                t = gpu.to_device(view, 0)
                _sync()
                times.append(time.perf_counter() - t0)
                del t
            out[f"h2d_{label}_GBps"] = batch_bytes / statistics.median(times[3:]) / 1e9

        measure("pageable", view)
        t0 = time.perf_counter()
        region = gpu.register_host(shm.buf)
        out["register_256MB_ms"] = (time.perf_counter() - t0) * 1e3
        try:
            if not gpu.is_pinned(view):
                raise SystemExit("the batch view is not inside the registered arena")
            measure("pinned", view)
        finally:
            region.unregister()
        out["pinned_speedup"] = out["h2d_pinned_GBps"] / out["h2d_pageable_GBps"]
        del arena, view
    finally:
        shm.close()
        shm.unlink()


def section_e2e(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((256, 1, 784), dtype=np.float32)
    model = build_mlp()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs.reshape(256, 784)).cuda()).cpu().numpy()
    runner = shmserve.Runner(GpuMLPRunnable, name="gpu-mlp", workers=1, max_batch_size=64, max_latency_ms=10,
                             gpus=_gpus())
    batches: dict[float, int] = {}

    def hook(name: str, method: str, trace: dict[str, float]) -> None:
        # Every call of one batch carries the same batch_start: one entry per batch.
        if name == "gpu-mlp":
            batches[trace.get("batch_start", trace.get("complete", 0.0))] = int(trace.get("batch_size", 1))

    from shmserve import client as client_mod

    with shmserve.start(runner):
        got = np.full((256, 10), np.nan, dtype=np.float32)
        for i in range(256):
            got[i] = runner.predict.run(inputs[i])[0]
        if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
            raise SystemExit(f"shmserve MLP outputs differ from in-process: max |d| {np.nanmax(np.abs(got - expected))}")

        async def load(concurrency: int, seconds: float) -> int:
            stop = time.monotonic() + seconds
            done = 0

            async def one(i: int) -> None:
                nonlocal done
                while time.monotonic() < stop:
                    await runner.predict.async_run(inputs[i % 256])
                    done += 1

            await asyncio.gather(*(one(i) for i in range(concurrency)))
            return done

        asyncio.run(load(args.concurrency, 1.0))  # warm-up
        client_mod.add_trace_hook(hook)
        t0 = time.perf_counter()
        items = asyncio.run(load(args.concurrency, args.seconds))
        elapsed = time.perf_counter() - t0
        client_mod.remove_trace_hook(hook)
    out["e2e_shmserve_items_per_s"] = items / elapsed
    out["e2e_concurrency"] = args.concurrency
    seq = [batches[k] for k in sorted(batches)]
    out["e2e_mean_batch"] = float(np.mean(seq)) if seq else 0.0
    x_all = np.ascontiguousarray(rng.standard_normal((64, 784), dtype=np.float32))
    with torch.no_grad():
        _sync()
        t0 = time.perf_counter()
        for b in seq:
            model(torch.from_numpy(x_all[:b]).cuda()).cpu().numpy()
        in_process = sum(seq) / (time.perf_counter() - t0)
    out["e2e_inprocess_items_per_s"] = in_process
    out["e2e_ratio"] = out["e2e_shmserve_items_per_s"] / in_process


def section_batch(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    from shmserve.gpu.batch import coalesce

    xs = [torch.randn(1, 784, device="cuda") for _ in range(64)]
    reference = torch.cat(xs)
    methods = ["cat"]
    try:
        import cupy  # noqa: F401

        methods.append("kernel")
    except ImportError:
        out["batch_kernel_skipped"] = "cupy not installed"
    for method in methods:
        b = coalesce(xs, method=method)
        if not torch.equal(b.tensor, reference):
            raise SystemExit(f"coalesce({method}) built a wrong batch")
        times = []
        for _ in range(args.reps + 10):
            _sync()
            t0 = time.perf_counter()
            coalesce(xs, method=method)
            _sync()
            times.append(time.perf_counter() - t0)
        out[f"coalesce64_{method}_us"] = statistics.median(times[10:]) * 1e6


def environment() -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "host": platform.node(),
    }
    try:
        import cupy

        meta["cupy"] = cupy.__version__
    except ImportError:
        meta["cupy"] = None
    try:
        sys.path.insert(0, str(REPO))
        from perf.env import git_info

        meta["git"] = git_info()
    except Exception as exc:  # the suite's helpers are optional here
        meta["git"] = f"unavailable: {exc}"
    return meta


TARGETS = [
    ("ipc_size_ratio_256_vs_4", "<=", 2.0, "IPC round trip independent of size (256 MB / 4 MB)"),
    ("ipc_speedup_256MB", ">=", 50.0, "IPC vs host copy at 256 MB"),
    ("transport_size_ratio_256_vs_4", "<=", 2.0, "served IPC round trip independent of size"),
    ("transport_speedup_256MB", ">=", 50.0, "served IPC vs host copy at 256 MB"),
    ("transport_leak_outstanding_exports", "<=", 0, "exports left after the served leak check"),
    ("transport_leak_device_free_delta_MB", "<=", 16.0, "device memory lost over the served leak check (MB)"),
    ("pinned_speedup", ">=", 1.5, "pinned vs pageable H2D bandwidth"),
    ("e2e_ratio", ">=", 0.9, "shmserve vs in-process throughput"),
    ("leak_outstanding_exports", "<=", 0, "exports left after the leak check (both sides)"),
    ("leak_device_free_delta_MB", "<=", 16.0, "device memory lost over the leak check (MB)"),
]


def _write(path: Path, meta: dict[str, Any], results: dict[str, Any], failed: list[str],
           args: argparse.Namespace) -> list[dict[str, Any]]:
    """Write the JSON result as it stands; returns the target verdicts."""
    verdicts = []
    for key, op, bound, what in TARGETS:
        if isinstance(results.get(key), (int, float)):
            ok = results[key] <= bound if op == "<=" else results[key] >= bound
            verdicts.append({"figure": key, "what": what, "value": results[key], "target": f"{op} {bound}", "met": ok})
    path.write_text(json.dumps({"meta": meta, "figures": results, "targets": verdicts, "failed_sections": failed,
                                "settings": vars(args)}, indent=2, default=str))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, 1,000-call leak check")
    p.add_argument("--only", default="ipc,transport,pinned,e2e,batch", help="comma-separated sections")
    p.add_argument("--out", default=str(REPO / "perf" / "results"), help="folder for the JSON result")
    p.add_argument("--json", default=None, help="write the JSON result to this file instead")
    args = p.parse_args(argv)
    args.reps = 20 if args.quick else 100
    args.leak_calls = 1000 if args.quick else 10_000
    args.seconds = 3.0 if args.quick else 10.0
    args.concurrency = 32
    try:
        gpu.frameworks.require("torch")
    except gpu.GpuUnavailable as exc:
        print(f"gpu_bench needs a CUDA GPU and a CUDA build of torch: {exc}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    sections = {"ipc": section_ipc, "transport": section_transport, "pinned": section_pinned, "e2e": section_e2e,
                "batch": section_batch}
    if args.json:
        path = Path(args.json)
    else:
        path = Path(args.out) / f"gpu_{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = environment()
    failed: list[str] = []
    for name in (n.strip() for n in args.only.split(",")):
        print(f"[gpu_bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            sections[name](args, results)
        except (Exception, SystemExit) as exc:  # record it and go on: the other sections' figures still count
            import traceback

            traceback.print_exc()
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
            failed.append(name)
        results[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_bench] {name} done in {results[f'{name}_seconds']} s", flush=True)
        _write(path, meta, results, failed, args)  # after every section: a run cut short keeps what it measured
    verdicts = _write(path, meta, results, failed, args)
    print(f"\n{'figure':40} {'value':>14}")
    for key, value in results.items():
        shown = f"{value:14.3f}" if isinstance(value, float) else f"{value!s:>14}"
        print(f"{key:40} {shown}")
    print(f"\n{'target':55} {'value':>10} {'target':>10}  met")
    for v in verdicts:
        print(f"{v['what']:55} {v['value']:10.2f} {v['target']:>10}  {'yes' if v['met'] else 'NO'}")
    print(f"\nwrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
