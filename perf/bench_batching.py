"""Batching: closed-loop callers (asyncio tasks) on the common MLP, batching on and off.

Each caller sends one (1, 784) float32 row, awaits the answer, and sends the
next, for a fixed time. Throughput is completed calls per second; the mean
batch size comes from the trace hook (calls that share a model run form one
batch). The same callers against a runner with max_batch_size=1 give the
"batching off" figure, measured in the same pass.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from . import calibration as cal
from . import tracing
from .results import Figure, ResultSet
from .stats import median, percentiles


async def _closed_loop(method: Any, callers: int, duration_s: float, x: np.ndarray) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter
    stop_at = clock() + duration_s

    async def caller() -> None:
        while clock() < stop_at:
            t0 = clock()
            try:
                y = await method.async_run(x)
            except Exception as exc:  # counted and reported, the load goes on
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(clock() - t0)
            del y

    t0 = clock()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = clock() - t0
    return {"calls": len(latencies), "elapsed_s": elapsed, "rps": len(latencies) / elapsed,
            "latency_ms": percentiles(np.asarray(latencies) * 1e3), "errors": len(errors),
            "first_error": errors[0] if errors else None}


def load(method: Any, callers: int, duration_s: float, collector: tracing.TraceCollector) -> dict[str, Any]:
    """Run `callers` closed-loop tasks on a fresh uvloop for `duration_s`; add batch stats."""
    import uvloop

    x = np.random.default_rng(1).standard_normal((1, 784), dtype=np.float32)
    uvloop.run(_closed_loop(method, 1, 0.1, x))  # warm the path
    collector.take()
    collector.recording = True
    try:
        out = uvloop.run(_closed_loop(method, callers, duration_s, x))
    finally:
        collector.recording = False
    traces = collector.take()
    out.update(tracing.batch_stats(traces))
    out["breakdown"] = tracing.breakdown(traces)
    return out


def verify(method: Any) -> None:
    """Concurrent calls come back with each caller's own answer (the --check part)."""
    import uvloop
    from workload import MLP

    model = MLP()
    xs = [np.random.default_rng(i).standard_normal((1 + i % 3, 784), dtype=np.float32) for i in range(16)]

    async def all_calls() -> list[Any]:
        return await asyncio.gather(*(method.async_run(x) for x in xs))

    for x, y in zip(xs, uvloop.run(all_calls()), strict=True):
        if not np.allclose(np.asarray(y), model(x), rtol=1e-4, atol=1e-5):
            raise AssertionError("a batched MLP call returned another caller's (or a wrong) answer")


def run(rs: ResultSet, passes: int, duration_s: float, caller_counts: tuple[int, ...],
        check_only: bool = False) -> None:
    """Measure batching figures into `rs` (needs the shared-memory core)."""
    import shmserve

    from .runnables import MLPRunnable

    on = shmserve.Runner(MLPRunnable, name="perf_mlp", workers=1, max_batch_size=64, max_latency_ms=10)
    off = shmserve.Runner(MLPRunnable, name="perf_mlp_nobatch", workers=1, max_batch_size=1, max_latency_ms=10)
    collector = tracing.TraceCollector()
    have_traces = tracing.install(collector)
    if not have_traces:
        rs.skip("batching.mean_batch_size", "shmserve.client.add_trace_hook is missing: no batch sizes")
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        with shmserve.start(on, off):
            verify(on.predict)
            if check_only:
                return
            for _ in range(passes):
                raw.setdefault("direct_b1", []).append({"rps": cal.mlp_direct(1, 0.3)})
                raw.setdefault("direct_b64", []).append({"rps": cal.mlp_direct(64, 0.3)})
                for n in caller_counts:
                    collector.runner_name = on.name
                    raw.setdefault(f"on_{n}", []).append(load(on.predict, n, duration_s, collector))
                collector.runner_name = off.name
                raw.setdefault("off_32", []).append(load(off.predict, 32, duration_s, collector))
    finally:
        tracing.uninstall(collector)
    _record(rs, raw, caller_counts)


def _record(rs: ResultSet, raw: dict[str, list[dict[str, Any]]], caller_counts: tuple[int, ...]) -> None:
    rs.add_calibration(Figure.from_passes("calib.mlp_direct_b1_per_s", [r["rps"] for r in raw["direct_b1"]],
                                          "calls/s", "higher"))
    rs.add_calibration(Figure.from_passes("calib.mlp_direct_b64_items_per_s",
                                          [r["rps"] for r in raw["direct_b64"]], "items/s", "higher"))
    curve = []
    for key in [f"on_{n}" for n in caller_counts] + ["off_32"]:
        runs = raw[key]
        n = int(key.split("_")[1])
        tag = "batching" if key.startswith("on") else "nobatch"
        rps = rs.add(Figure.from_passes(
            f"{tag}.c{n}_rps", [r["rps"] for r in runs], "calls/s", "higher",
            calibration="calib.mlp_direct_b64_items_per_s" if tag == "batching" else "calib.mlp_direct_b1_per_s",
            detail={"errors": sum(r["errors"] for r in runs), "first_error": next(
                (r["first_error"] for r in runs if r["first_error"]), None)}))
        p50 = rs.add(Figure.from_passes(
            f"{tag}.c{n}_p50_ms", [r["latency_ms"]["p50"] for r in runs], "ms", "lower",
            p99=median([r["latency_ms"]["p99"] for r in runs])))
        mbs = Figure.from_passes(f"{tag}.c{n}_mean_batch_size", [r["mean_batch_size"] for r in runs], "items",
                                 "higher", detail={"per_call": median([r["mean_batch_size_per_call"] for r in runs])})
        if np.isfinite(mbs.value):
            rs.add(mbs)
        curve.append({"mode": tag, "callers": n, "rps": rps.value, "p50_ms": p50.value, "p99_ms": p50.p99,
                      "mean_batch_size": mbs.value, "histogram": runs[-1].get("histogram", {}),
                      "breakdown": runs[-1].get("breakdown", {})})
    if "batching.c32_rps" in rs.figures and "nobatch.c32_rps" in rs.figures:
        on = rs.figures["batching.c32_rps"].passes
        off = rs.figures["nobatch.c32_rps"].passes
        rs.add(Figure.from_passes("issue2.batching_speedup_c32", [a / b for a, b in zip(on, off, strict=True)], "x", "higher",
                                  target="batching on beats off at 32 callers (issue 2)"))
        rs.figures["issue2.batching_speedup_c32"].target_met = rs.figures["issue2.batching_speedup_c32"].value > 1
    rs.extras["batching_curve"] = curve
