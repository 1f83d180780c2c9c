"""The Open Inference Protocol side by side, in one run: shmserve against Triton (through PyTriton).

::

    python -m perf.bench_v2                 # Triton too when perf/peers/.venvs/pytriton exists
    python -m perf.bench_v2 --no-triton --duration 3 --passes 1

Figures (p50/p99 from wrk or from per-call timings; each figure is the median over
``--passes`` rounds, and each ratio the median of the ratios measured within one round):

1. v2 binary tensor requests (one (1, 784) float32 input of the common MLP, binary
   output) under ``wrk`` at 1, 32 and 128 connections: req/s, p50, p99, for
   shmserve (``mlp.predict``, one API worker (``--api-workers``), one runner worker) and Triton 2.51
   through PyTriton 0.7 (``mlp``, dynamic batching 64 / 10 ms). Within a round
   the two servers take turns at each connection count (the first alternates
   from round to round), so a load spike from elsewhere hits both alike.
2. gRPC at one connection, per call, shmserve and Triton in turn: ``ModelInfer`` of
   the same request through a raw ``grpc`` stub with the request message built once
   (the cheapest honest client: ``infer_raw``) and through
   ``tritonclient.grpc.InferenceServerClient.infer`` (which builds the messages on
   every call: ``infer_tritonclient``), and ``ServerLive`` (an RPC that does no work).
   In the same round, the same calls against the minimal servers of `perf.grpc_floor`
   (``grpc.aio`` on uvloop, as our API worker runs it, and grpcio's thread-pool server):
   ``noop-*`` answer ``ServerLive`` and ``ModelInfer`` with prebuilt responses (the floor of
   grpcio itself on this machine), ``bare-*`` answer ``ModelInfer`` by calling the same
   runner with no checks (the floor of grpcio plus the runner call, async and sync). And the
   runner's round trip by itself (``async_run`` on uvloop from this process), back to back and
   with 0.5 ms between calls (the pace of one gRPC connection: an idle worker sleeps and is
   woken), so the goal's floor reads as the no-op ModelInfer plus the paced round trip.
3. A 16 MB float32 input to ``big.head`` (returns its first row): through a
   registered system shared-memory region, against one ``memcpy`` of 16 MB measured
   in the same loop; the same input to ``big.same`` (returns it) with the output named
   in a second region (``region_in_out``: 16 MB each way; the runner worker writes it there), and against the same tensor as binary v2 over HTTP (a block of
   its own in the same round).

Results go to ``perf/results/<stamp>_v2.json`` and are printed as a table. The
development machine is shared and noisy (2 cores, several users; the load average
at the start and end is printed): read the figures as ratios measured side by
side, not as absolutes.
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
FLOORS = ("aio", "sync")  # perf.grpc_floor's no-op servers


def start_shmserve(http_port: int, grpc_port: int, log: Path, api_workers: int = 1) -> Any:
    import subprocess

    cmd = [sys.executable, "-m", "shmserve.cli", "serve", "v2_service:svc", "--port", str(http_port),
           "--grpc-port", str(grpc_port), "--allow-client-shm", "--api-workers", str(api_workers),
           "--log-level", "WARNING"]
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


def load(url: str, body: Path, hlen: int, duration: float, connections: int) -> wrk.WrkResult:
    """`wrk` with the v2 body at `connections` connections."""
    res = wrk.run(url, body, "application/octet-stream", connections, duration, script=HERE / "v2_post.lua",
                  script_env={"HLEN": str(hlen)})
    if res.errors:
        raise RuntimeError(f"{url} at {connections} connections: {res.errors} errors\n{res.raw[-1500:]}")
    return res


def _per_call_ms(call: Any, n: int) -> dict[str, float]:
    for _ in range(100):
        call()
    took = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        call()
        took[i] = time.perf_counter() - t0
    return percentiles(took * 1e3)


def grpc_latency(url: str, model: str | None, x: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    """ms per call at one connection: ``ModelInfer`` of `x` (raw stub, and tritonclient) and ``ServerLive``.

    `model` None: only ``ServerLive`` (the no-op floor servers).
    """
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    out: dict[str, dict[str, float]] = {}
    with grpc.insecure_channel(url) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        live = pb.ServerLiveRequest()
        out["live"] = _per_call_ms(lambda: stub.ServerLive(live), n)
        if model is None:
            return out
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        out["infer_raw"] = _per_call_ms(lambda: stub.ModelInfer(request), n)
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out["infer_tritonclient"] = _per_call_ms(lambda: client.infer(model, [inp]), n)
    finally:
        client.close()
    return out


RUNNER_PACES = {"back_to_back": "back to back", "paced": "0.5 ms apart (one gRPC conn.)"}


def runner_latency(runner: str, x: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    """ms per ``async_run`` of `x` on `runner` from a uvloop loop in this process: back to back, and
    with 0.5 ms between calls (the runner worker and this loop sleep between them, as at one gRPC connection)."""

    import uvloop

    import shmserve

    async def timed(client: Any, gap_s: float) -> dict[str, float]:
        for _ in range(100):
            await client.predict.async_run(x)
        took = np.empty(n)
        for i in range(n):
            if gap_s:
                time.sleep(gap_s)  # the loop blocks, as it waits in epoll between a connection's requests
            t0 = time.perf_counter()
            await client.predict.async_run(x)
            took[i] = time.perf_counter() - t0
        return percentiles(took * 1e3)

    async def both() -> dict[str, dict[str, float]]:
        with shmserve.connect(runner) as client:
            return {"back_to_back": await timed(client, 0.0), "paced": await timed(client, 0.0005)}

    return uvloop.run(both())


def start_floor(kind: str, port: int, log: Path, runner: str | None = None) -> Any:
    """A minimal gRPC server of `perf.grpc_floor` (calling `runner` in ModelInfer, if given), once it listens."""
    import subprocess

    fh = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "perf.grpc_floor", kind, str(port), *([runner] if runner else [])], cwd=HERE.parent,
                            env=child_env(), stdout=subprocess.PIPE, stderr=fh)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        stop(proc)
        raise RuntimeError(f"perf.grpc_floor {kind} did not start; see {log}")
    return proc


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
    out_handle = shm.create_shared_memory_region("big_out", key + "o", x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("big_in", key, x.nbytes)
        client.register_system_shared_memory("big_out", key + "o", x.nbytes)
        ref = httpclient.InferInput("x", list(x.shape), "FP32")
        ref.set_shared_memory("big_in", x.nbytes)
        out_ref = httpclient.InferRequestedOutput("output")
        out_ref.set_shared_memory("big_out", x.nbytes)
        binary = httpclient.InferInput("x", list(x.shape), "FP32")
        binary.set_data_from_numpy(x)
        region, region_out, over_http = np.empty(n), np.empty(n), np.empty(n)
        for _ in range(3):
            client.infer(f"big{SUFFIX}.head", [ref])
            client.infer(f"big{SUFFIX}.same", [ref], outputs=[out_ref])
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
            t0 = time.perf_counter()
            client.infer(f"big{SUFFIX}.same", [ref], outputs=[out_ref])  # 16 MB in and 16 MB out, both regions
            region_out[i] = time.perf_counter() - t0
        for i in range(n):
            t0 = time.perf_counter()
            client.infer(f"big{SUFFIX}.head", [binary])
            over_http[i] = time.perf_counter() - t0
        np.testing.assert_array_equal(out, x[:1])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, list(x.shape)), x)
        client.unregister_system_shared_memory("big_in")
        client.unregister_system_shared_memory("big_out")
    finally:
        shm.destroy_shared_memory_region(handle)
        shm.destroy_shared_memory_region(out_handle)
        client.close()
    return {"memcpy": percentiles(memcpy * 1e3), "region": percentiles(region * 1e3),
            "region_in_out": percentiles(region_out * 1e3), "http_binary": percentiles(over_http * 1e3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per connection count and server")
    p.add_argument("--passes", type=int, default=3, help="rounds; figures are medians over them")
    p.add_argument("--grpc-calls", type=int, default=1000, help="calls of each RPC per server and round")
    p.add_argument("--big-calls", type=int, default=20, help="16 MB calls of each kind per round")
    p.add_argument("--api-workers", type=int, default=1, help="shmserve's API workers (1: `shmserve serve`'s default)")
    p.add_argument("--no-triton", action="store_true")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--big-only", action="store_true", help="only the 16 MB figures (no wrk, no gRPC)")
    only.add_argument("--grpc-only", action="store_true", help="only the gRPC figures and their floors")
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
    floors: dict[str, Any] = {}  # the no-op gRPC servers of perf.grpc_floor
    report: dict[str, Any] = {"meta": metadata("v2"), "passes": args.passes, "api_workers": args.api_workers,
                              "skipped": {},
                              "note": "shared, noisy 2-core machine: compare side by side; ratios are medians of "
                                      "per-round ratios"}
    if not triton:
        report["skipped"]["triton"] = ("--no-triton/--big-only" if args.no_triton or args.big_only else
                                       f"PyTriton not installed ({triton_python()} missing): bash perf/peers/install.sh pytriton")
    runs: dict[str, dict[int, list[wrk.WrkResult]]] = {}
    grpc_runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    big_runs: list[dict[str, dict[str, float]]] = []
    runner_runs: list[dict[str, dict[str, float]]] = []
    try:
        ports = {"shmserve": (free_port(), free_port())}
        servers["shmserve"] = start_shmserve(*ports["shmserve"], results / f"{stamp}_v2_shmserve.log", args.api_workers)
        if triton:
            ports["triton"] = (free_port(), free_port())
            servers["triton"] = start_triton(*ports["triton"], results / f"{stamp}_v2_triton.log")
        models: dict[str, str | None] = {"shmserve": f"mlp{SUFFIX}.predict", "triton": "mlp"}
        if not (args.big_only or args.grpc_only):
            runs = {name: {c: [] for c in CONNECTIONS} for name in servers}
        if not args.big_only:
            for kind in FLOORS:
                for name, runner in ((f"noop-{kind}", None), (f"bare-{kind}", f"mlp{SUFFIX}")):
                    ports[name] = (0, free_port())
                    models[name] = models["shmserve"]
                    floors[name] = start_floor(kind, ports[name][1], results / f"{stamp}_v2_{name}.log", runner)
        grpc_runs = {name: [] for name in (*servers, *floors)}
        for round_no in range(args.passes):
            order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
            if not (args.big_only or args.grpc_only):
                for c in CONNECTIONS:
                    for name in order:
                        url = f"http://127.0.0.1:{ports[name][0]}/v2/models/{models[name]}/infer"
                        runs[name][c].append(load(url, body, hlen, args.duration, c))
            if not args.big_only:
                for name in (*order, *floors):
                    grpc_runs[name].append(grpc_latency(f"127.0.0.1:{ports[name][1]}", models[name], x,
                                                        args.grpc_calls))
                runner_runs.append(runner_latency(f"mlp{SUFFIX}", x, args.grpc_calls))
            if not args.grpc_only:
                big_runs.append(big_input(f"127.0.0.1:{ports['shmserve'][0]}", args.big_calls))
    finally:
        for name, proc in servers.items():
            stop(proc, group=(name == "triton"))
        for proc in floors.values():
            stop(proc)
        body.unlink(missing_ok=True)
    report["loadavg_end"] = list(os.getloadavg())
    summarize(report, runs, grpc_runs, big_runs, runner_runs)
    out = args.out or results / f"{stamp}_v2.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print_report(report)
    print(f"\nwritten to {out}")
    return 0


def _med(rounds: list[dict[str, float]], key: str) -> float:
    return median([r[key] for r in rounds])


def summarize(report: dict[str, Any], runs: dict[str, dict[int, list[wrk.WrkResult]]],
              grpc_runs: dict[str, list[dict[str, dict[str, float]]]],
              big_runs: list[dict[str, dict[str, float]]],
              runner_runs: list[dict[str, dict[str, float]]] | None = None) -> None:
    """Medians over rounds into `report`; each ratio is the median of the ratios taken within each round."""
    report["http_binary"] = {name: {str(c): {"rps": median([r.rps for r in rs]),
                                             "p50_ms": median([r.latency_ms.get("p50", 0.0) for r in rs]),
                                             "p99_ms": median([r.latency_ms.get("p99", 0.0) for r in rs]),
                                             "rps_passes": [r.rps for r in rs]}
                                    for c, rs in by_c.items()} for name, by_c in runs.items()}
    report["grpc_c1_ms"] = {name: {rpc: {q: median([r[rpc][q] for r in rounds]) for q in ("p50", "p99")}
                                   for rpc in rounds[0]}
                            for name, rounds in grpc_runs.items() if rounds}
    report["runner_async_ms"] = {what: {q: median([r[what][q] for r in runner_runs]) for q in ("p50", "p99")}
                                 for what in RUNNER_PACES} if runner_runs else {}
    if runner_runs and len(grpc_runs.get("noop-aio", [])) == len(runner_runs):
        # The goal's floor on this machine, per round: grpc.aio answering ModelInfer with no work, plus
        # the runner's round trip at one connection's pace (both measured here, in the same round).
        report["grpc_floor_aio_p50_ms"] = median([g["infer_raw"]["p50"] + r["paced"]["p50"]
                                                  for g, r in zip(grpc_runs["noop-aio"], runner_runs, strict=True)])
    report["big_16MB_ms"] = {what: {q: median([r[what][q] for r in big_runs]) for q in ("p50", "p99")}
                             for what in ("memcpy", "region", "region_in_out", "http_binary")} if big_runs else {}
    ratios: dict[str, Any] = {}
    if "triton" in runs and runs["triton"][CONNECTIONS[0]]:
        for c in CONNECTIONS:
            per = [a.rps / b.rps for a, b in zip(runs["shmserve"][c], runs["triton"][c], strict=True) if b.rps]
            ratios[f"rps_c{c}_shmserve_over_triton"] = median(per)
            ratios[f"rps_c{c}_shmserve_over_triton_rounds"] = per
    if grpc_runs.get("triton"):
        ratios["grpc_infer_raw_p50_triton_over_shmserve"] = median([
            b["infer_raw"]["p50"] / a["infer_raw"]["p50"]
            for a, b in zip(grpc_runs["shmserve"], grpc_runs["triton"], strict=True)])
    if grpc_runs.get("shmserve"):
        ours = grpc_runs["shmserve"]
        ratios["grpc_infer_raw_p50_over_live_p50_shmserve"] = median([r["infer_raw"]["p50"] / r["live"]["p50"]
                                                                       for r in ours])
        for name in ("noop-aio", "noop-sync"):
            if grpc_runs.get(name):
                ratios[f"grpc_live_p50_shmserve_over_{name}"] = median([
                    a["live"]["p50"] / b["live"]["p50"] for a, b in zip(ours, grpc_runs[name], strict=True)])
        for name in ("bare-aio", "bare-sync"):
            if grpc_runs.get(name):
                ratios[f"grpc_infer_raw_p50_shmserve_over_{name}"] = median([
                    a["infer_raw"]["p50"] / b["infer_raw"]["p50"] for a, b in zip(ours, grpc_runs[name], strict=True)])
    if big_runs:
        per = [r["region"]["p50"] / r["memcpy"]["p50"] for r in big_runs]
        ratios["region_over_memcpy_p50"] = median(per)
        ratios["region_over_memcpy_p50_rounds"] = per
        per_out = [r["region_in_out"]["p50"] / r["memcpy"]["p50"] for r in big_runs]
        ratios["region_in_out_over_memcpy_p50"] = median(per_out)
        ratios["region_in_out_over_memcpy_p50_rounds"] = per_out
        ratios["http_binary_over_region_p50"] = median([r["http_binary"]["p50"] / r["region"]["p50"] for r in big_runs])
    report["ratios"] = ratios


def print_report(r: dict[str, Any]) -> None:
    load = r["meta"]["machine"].get("loadavg", [0.0])[0]
    print(f"Open Inference Protocol, {r['passes']} rounds, shmserve with {r.get('api_workers', 1)} API worker(s) "
          f"(shared noisy 2-core machine, load average "
          f"{load:.1f} at the start, {r['loadavg_end'][0]:.1f} at the end: read the ratios)")
    for name, by_c in r["http_binary"].items():
        for c, f in by_c.items():
            print(f"  v2 binary HTTP {name:9s} c={c:>3}: {f['rps']:9.0f} req/s  p50 {f['p50_ms']:.3f} ms  "
                  f"p99 {f['p99_ms']:.3f} ms  (rounds {', '.join(f'{v:.0f}' for v in f['rps_passes'])})")
    for name, rpcs in r["grpc_c1_ms"].items():
        for rpc, lat in rpcs.items():
            label = {"live": "ServerLive", "infer_raw": "ModelInfer (raw stub)",
                     "infer_tritonclient": "ModelInfer (tritonclient)"}[rpc]
            print(f"  gRPC c=1 {name:9s} {label:27s}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms")
    for what, lat in r.get("runner_async_ms", {}).items():
        print(f"  runner async_run {RUNNER_PACES[what]:28s}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms")
    if "grpc_floor_aio_p50_ms" in r:
        ours = r["grpc_c1_ms"]["shmserve"]["infer_raw"]["p50"]
        print(f"  gRPC ModelInfer p50 goal 0.5 ms: shmserve {ours:.3f} ms; floor here (no-op grpc.aio ModelInfer "
              f"+ paced runner round trip) {r['grpc_floor_aio_p50_ms']:.3f} ms"
              + ("  -> out of reach with grpc.aio on this machine" if r["grpc_floor_aio_p50_ms"] > 0.5 else ""))
    for what, lat in r["big_16MB_ms"].items():
        print(f"  16 MB {what:12s}: p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms")
    for k, v in r["ratios"].items():
        if isinstance(v, list):
            print(f"    rounds: {', '.join(f'{x:.2f}' for x in v)}")
        else:
            print(f"  {k}: {v:.2f}")
    for k, v in r["skipped"].items():
        print(f"  skipped {k}: {v}")


if __name__ == "__main__":
    raise SystemExit(main())
