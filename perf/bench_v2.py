"""The Open Inference Protocol side by side, in one run: shmserve against Triton (through PyTriton).

::

    python -m perf.bench_v2                 # Triton too when perf/peers/.venvs/pytriton exists
    python -m perf.bench_v2 --no-triton --duration 3 --passes 1

Figures (medians over passes; p50/p99 from wrk or from per-call timings):

1. v2 binary tensor requests (one (1, 784) float32 input of the common MLP, binary
   output) under ``wrk`` at 1, 32 and 128 connections: req/s, p50, p99, for
   shmserve (``mlp.predict``, one API worker, one runner worker) and Triton 2.51
   through PyTriton 0.7 (``mlp``, dynamic batching 64 / 10 ms).
2. gRPC ``ModelInfer`` of the same request at one connection (tritonclient.grpc,
   sync): p50 and p99 per call, shmserve and Triton.
3. A 16 MB float32 input to ``big.head`` (returns its first row): through a
   registered system shared-memory region, against one ``memcpy`` of 16 MB measured
   in the same loop, and against the same tensor as binary v2 over HTTP (a block of
   its own in the same run).

Results go to ``perf/results/<stamp>_v2.json`` and are printed as a table. The
development machine is shared and noisy (2 cores, several users): read the
figures as ratios measured side by side, not as absolutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from . import wrk
from .env import child_env, metadata
from .peers.servers import VENVS
from .procs import free_port, stop, wait_http
from .stats import median, percentiles

HERE = Path(__file__).resolve().parent
SUFFIX = f"-{os.getpid()}"  # runner names are unique per host: keep apart from other servers
CONNECTIONS = (1, 32, 128)
BIG_BYTES = 16 * 1024 * 1024


def start_shmserve(http_port: int, grpc_port: int, log: Path) -> Any:
    import subprocess

    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "v2_service:svc", "--port", str(http_port),
           "--grpc-port", str(grpc_port), "--allow-client-shm", "--api-workers", "1", "--log-level", "WARNING"]
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=HERE, env=child_env(V2_BENCH_SUFFIX=SUFFIX), stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", 90, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def triton_python() -> Path:
    return VENVS / "pytriton" / "bin" / "python"


def start_triton(http_port: int, grpc_port: int, log: Path) -> Any:
    import subprocess

    env = child_env()
    env["PYTHONPATH"] = env["PYTHONPATH"].split(":", 1)[1]  # the peer sees the workload, not shmserve
    fh = log.open("wb")
    proc = subprocess.Popen([str(triton_python()), "pytriton_server.py", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port)], cwd=HERE / "peers", env=env, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/v2/models/mlp/ready", 240, proc)
    except BaseException:
        stop(proc, group=True)
        raise
    return proc


def v2_body(path: Path, x: np.ndarray) -> int:
    """Write a binary-tensor request for input ``x`` to `path`; the length of its JSON part."""
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]})
    path.write_bytes(head + x.tobytes())
    return len(head)


def load(url: str, body: Path, hlen: int, duration: float) -> dict[int, wrk.WrkResult]:
    out = {}
    for c in CONNECTIONS:
        out[c] = wrk.run(url, body, "application/octet-stream", c, duration, script=HERE / "v2_post.lua",
                         script_env={"HLEN": str(hlen)})
        if out[c].errors:
            raise RuntimeError(f"{url} at {c} connections: {out[c].errors} errors\n{out[c].raw[-1500:]}")
    return out


def grpc_latency(url: str, model: str, x: np.ndarray, n: int) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(100):
            client.infer(model, [inp])
        times = np.empty(n)
        for i in range(n):
            t0 = time.perf_counter()
            client.infer(model, [inp])
            times[i] = time.perf_counter() - t0
    finally:
        client.close()
    return percentiles(times * 1e3)


def big_input(http: str, n: int) -> dict[str, dict[str, float]]:
    """16 MB through a region vs one memcpy vs binary v2 over HTTP (ms per call)."""
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    x = np.random.default_rng(0).standard_normal(BIG_BYTES // 4).astype(np.float32).reshape(4096, -1)
    dst = np.empty_like(x)
    memcpy = np.empty(n)
    client = httpclient.InferenceServerClient(http, connection_timeout=60, network_timeout=60)
    key = f"/v2bench_{time.monotonic_ns()}"
    handle = shm.create_shared_memory_region("big_in", key, x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("big_in", key, x.nbytes)
        ref = httpclient.InferInput("x", list(x.shape), "FP32")
        ref.set_shared_memory("big_in", x.nbytes)
        binary = httpclient.InferInput("x", list(x.shape), "FP32")
        binary.set_data_from_numpy(x)
        region, over_http = np.empty(n), np.empty(n)
        for _ in range(3):
            client.infer(f"big{SUFFIX}.head", [ref])
            client.infer(f"big{SUFFIX}.head", [binary])
        np.copyto(dst, x)
        # The region and memcpy interleaved; the HTTP tensor in a block of its own: a region call
        # right after a 16 MB HTTP call was measured 5-7x slower than one after another region call
        # (cause not found), which would charge the region with the HTTP call's after-effects.
        for i in range(n):
            t0 = time.perf_counter()
            np.copyto(dst, x)
            memcpy[i] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = client.infer(f"big{SUFFIX}.head", [ref]).as_numpy("output")
            region[i] = time.perf_counter() - t0
        for i in range(n):
            t0 = time.perf_counter()
            client.infer(f"big{SUFFIX}.head", [binary])
            over_http[i] = time.perf_counter() - t0
        np.testing.assert_array_equal(out, x[:1])
        client.unregister_system_shared_memory("big_in")
    finally:
        shm.destroy_shared_memory_region(handle)
        client.close()
    return {"memcpy": percentiles(memcpy * 1e3), "region": percentiles(region * 1e3),
            "http_binary": percentiles(over_http * 1e3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per connection count")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--grpc-calls", type=int, default=2000)
    p.add_argument("--big-calls", type=int, default=20)
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--big-only", action="store_true", help="only the 16 MB figures (no wrk, no gRPC)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    body = results / f"{stamp}_v2_body.bin"
    x = np.random.default_rng(1).standard_normal((1, 784)).astype(np.float32)
    hlen = v2_body(body, x)
    triton = not (args.no_triton or args.big_only) and triton_python().exists()
    servers: dict[str, Any] = {}
    report: dict[str, Any] = {"meta": metadata("v2"), "note": "shared, noisy 2-core machine: compare side by side",
                              "skipped": {}}
    if not triton:
        report["skipped"]["triton"] = ("--no-triton/--big-only" if args.no_triton or args.big_only else
                                       f"PyTriton not installed ({triton_python()} missing): bash perf/peers/install.sh pytriton")
    try:
        ports = {"shmserve": (free_port(), free_port())}
        servers["shmserve"] = start_shmserve(*ports["shmserve"], results / f"{stamp}_v2_shmserve.log")
        if triton:
            ports["triton"] = (free_port(), free_port())
            servers["triton"] = start_triton(*ports["triton"], results / f"{stamp}_v2_triton.log")
        models = {"shmserve": f"mlp{SUFFIX}.predict", "triton": "mlp"}
        runs: dict[str, dict[int, list[wrk.WrkResult]]] = {name: {c: [] for c in CONNECTIONS} for name in servers}
        for _ in range(0 if args.big_only else args.passes):
            for name in servers:
                url = f"http://127.0.0.1:{ports[name][0]}/v2/models/{models[name]}/infer"
                for c, res in load(url, body, hlen, args.duration).items():
                    runs[name][c].append(res)
        report["http_binary"] = {name: {str(c): {"rps": median([r.rps for r in rs]),
                                                 "p50_ms": median([r.latency_ms.get("p50", 0.0) for r in rs]),
                                                 "p99_ms": median([r.latency_ms.get("p99", 0.0) for r in rs]),
                                                 "rps_passes": [r.rps for r in rs]}
                                        for c, rs in by_c.items()} for name, by_c in runs.items()}
        report["grpc_c1_ms"] = {name: grpc_latency(f"127.0.0.1:{ports[name][1]}", models[name], x, args.grpc_calls)
                                for name in servers if not args.big_only}
        report["big_16MB_ms"] = big_input(f"127.0.0.1:{ports['shmserve'][0]}", args.big_calls)
    finally:
        for name, proc in servers.items():
            stop(proc, group=(name == "triton"))
        body.unlink(missing_ok=True)
    ratios: dict[str, float] = {}
    if "triton" in report["http_binary"]:
        for c in CONNECTIONS:
            ratios[f"rps_c{c}_shmserve_over_triton"] = (report["http_binary"]["shmserve"][str(c)]["rps"]
                                                         / report["http_binary"]["triton"][str(c)]["rps"])
    big = report["big_16MB_ms"]
    ratios["region_over_memcpy_p50"] = big["region"]["p50"] / big["memcpy"]["p50"]
    ratios["http_binary_over_region_p50"] = big["http_binary"]["p50"] / big["region"]["p50"]
    report["ratios"] = ratios
    out = args.out or results / f"{stamp}_v2.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print_report(report)
    print(f"\nwritten to {out}")
    return 0


def print_report(r: dict[str, Any]) -> None:
    print("Open Inference Protocol, one run (shared noisy 2-core machine: read the ratios)")
    for name, by_c in r["http_binary"].items():
        for c, f in by_c.items():
            print(f"  v2 binary HTTP {name:9s} c={c:>3}: {f['rps']:9.0f} req/s  p50 {f['p50_ms']:.3f} ms  "
                  f"p99 {f['p99_ms']:.3f} ms  (passes {', '.join(f'{v:.0f}' for v in f['rps_passes'])})")
    for name, lat in r["grpc_c1_ms"].items():
        print(f"  gRPC ModelInfer c=1 {name:9s}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms")
    for what, lat in r["big_16MB_ms"].items():
        print(f"  16 MB {what:12s}: p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms")
    for k, v in r["ratios"].items():
        print(f"  {k}: {v:.2f}")
    for k, v in r["skipped"].items():
        print(f"  skipped {k}: {v}")


if __name__ == "__main__":
    raise SystemExit(main())
