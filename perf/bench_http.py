"""HTTP: `shmserve serve examples.service_mlp:svc --api-workers 1` loaded with wrk, beside a
trivial uvloop + httptools server (calibration) and, when installed, the peers.

Per pass: start the service (its start-up time is a figure), check its answers,
load it with wrk at each connection count and body type, read /metrics around
the one-connection JSON run for a latency breakdown, take the memory of every
process, stop it. The trivial server's runs are interleaved with each pass.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import wrk
from .env import REPO, bench_dir, child_env
from .procs import cmdline, descendants, free_port, memory_of, stop, wait_http
from .results import Figure, ResultSet
from .stats import median

SERVICE = "examples.service_mlp:svc"
LOG_DIR = REPO / "perf" / "results" / "logs"

# Reference figures from ../shared/DESIGN.md (2-core development machine), used only
# when the peer could not be measured in this run; the report says which it was.
MOSEC_REF_C32_RPS = 2119.0

LATENCY_CALIBRATION = "calib.http_trivial_c1_p50_ms"


@dataclass(frozen=True)
class HttpPlan:
    """How long and how often to load each server."""

    passes: int
    duration_s: float
    connections: tuple[int, ...] = (1, 32, 128)
    sweep: tuple[int, ...] = ()  # extra JSON connection counts for the latency-throughput curve
    sweep_duration_s: float = 3.0
    trivial_duration_s: float = 2.0
    route: str = "/predict"


def serve_available() -> str | None:
    """None when `shmserve serve` and the example service exist; otherwise why not."""
    if not (REPO / "examples" / "service_mlp.py").exists():
        return "examples/service_mlp.py is not in the tree yet"
    out = subprocess.run([sys.executable, "-m", "shmserve.cli", "serve", "--help"], cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return "`shmserve serve` is not available: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    return None


def start_shmserve(port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """Start the service; return it and the seconds until /readyz answered 200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port),
           "--api-workers", "1"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 60, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"shmserve serve did not get ready; see {log}") from None
    return proc, time.monotonic() - t0


def calibration_cpus() -> tuple[int | None, int | None]:
    """(wrk's CPU, the trivial server's CPU) for the calibration runs.

    At one connection a request is a wake-up ping-pong between wrk and the
    server, and on this VM that costs ~15 µs on one CPU and ~50 µs across two,
    whichever the scheduler picks. Pinned to two CPUs the calibration is
    steady and matches a multi-process server, whose hops cross CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)


def start_trivial(port: int) -> subprocess.Popen:
    """Start the calibration server (pinned, see `calibration_cpus`) and wait for its 'ready' line."""
    server_cpu = calibration_cpus()[1]
    pin = (lambda: os.sched_setaffinity(0, {server_cpu})) if server_cpu is not None else None
    proc = subprocess.Popen([sys.executable, "-m", "perf.trivial_server", str(port)], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=pin)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        stop(proc)
        raise RuntimeError("the trivial calibration server did not start")
    return proc


def post(url: str, body: bytes, ctype: str, accept: str = "application/json", timeout: float = 10) -> bytes:
    """POST `body`; return the response body (raises on a non-2xx answer)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype, "Accept": accept})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def decode_answer(raw: bytes) -> np.ndarray:
    """A JSON array answer, or a JSON object holding one array, as float32."""
    data = json.loads(raw)
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    return np.asarray(data, dtype=np.float32)


def verify(url: str, bodies: tuple[str, ...]) -> None:
    """The server's answer to each body matches the MLP computed here (the --check part)."""
    from workload import MLP

    x = np.asarray(json.loads((bench_dir() / "body_array.json").read_bytes()), dtype=np.float32)
    want = MLP()(x.reshape(-1, 784))
    for name in bodies:
        path, ctype = wrk.bodies()[name]
        got = decode_answer(post(url, path.read_bytes(), ctype))
        if got.size != want.size or not np.allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4):
            raise AssertionError(f"{url} answered the {name} body with {got!r}, expected {want!r}")


def roles_from_log(log: Path) -> dict[int, str]:
    """pid -> role, from the lines `shmserve serve` logs when it starts its workers."""
    roles: dict[int, str] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return roles
    for m in re.finditer(r"runner '([^']+)' workers: pids \[([\d, ]*)\]", text):
        for pid in re.findall(r"\d+", m.group(2)):
            roles[int(pid)] = "runner_worker"
    for m in re.finditer(r"API worker \d+: pid (\d+)", text):
        roles[int(m.group(1))] = "api_worker"
    return roles


def _role(pid: int, root: int, known: dict[int, str]) -> str:
    if pid == root:
        return "supervisor"
    if pid in known:
        return known[pid]
    cmd = cmdline(pid)
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return "other"


def memory_tree(root: int, known: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Memory of `root` and each of its descendants, with its role where `known` (or the command line) says."""
    rows = []
    for pid in [root, *descendants(root)]:
        mem = memory_of(pid)
        for _ in range(3):  # /proc reads can fail transiently while the process maps memory
            if mem:
                break
            time.sleep(0.05)
            mem = memory_of(pid)
        if mem:
            rows.append({"pid": pid, "role": _role(pid, root, known or {}), "cmd": cmdline(pid)[:160], **mem})
    return rows


def scrape(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram on /metrics, keyed by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_sum") or s.name.endswith("_count"):
                base = s.name.rsplit("_", 1)[0]
                key = base + json.dumps(dict(sorted(s.labels.items())))
                pair = out.setdefault(key, [0.0, 0.0])
                pair[0 if s.name.endswith("_sum") else 1] = float(s.value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def metrics_breakdown(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                      wrk_mean_ms: float) -> dict[str, float]:
    """Mean ms per request of each stage, from /metrics histogram deltas over one wrk run."""
    def mean(prefix: str) -> float | None:
        for key, (s1, c1) in after.items():
            if key.startswith(prefix) and ('"status": "200"' in key or "status" not in key):
                s0, c0 = before.get(key, (0.0, 0.0))
                if c1 > c0:
                    return (s1 - s0) / (c1 - c0) * 1e3
        return None

    http = mean("shmserve_http_request_duration_seconds")
    call = mean("shmserve_runner_call_seconds")
    wait = mean("shmserve_runner_queue_wait_seconds")
    compute = mean("shmserve_runner_compute_seconds")
    out: dict[str, float] = {"client-observed mean (wrk)": wrk_mean_ms}
    if http is not None:
        out["socket + HTTP parse + wrk (client - server)"] = wrk_mean_ms - http
    if http is not None and call is not None:
        out["API worker: decode + encode + dispatch (server - runner call)"] = http - call
    if wait is not None:
        out["runner: queue wait + batch assembly (submit -> model start)"] = wait
    if compute is not None:
        out["runner: model"] = compute
    if call is not None and wait is not None and compute is not None:
        out["runner: result write + wake-up + read (call - wait - model)"] = call - wait - compute
    return out


TRACE_STAGES = (
    ("HTTP parse", "begin", "parsed"),
    ("decode body", "parsed", "decoded"),
    ("API code to runner call", "decoded", "r.submit"),
    ("queue + wake-up (to worker)", "r.submit", "r.dequeue"),
    ("dispatch (intake + policy)", "r.dequeue", "r.batch_start"),
    ("batch assembly", "r.batch_start", "r.model_start"),
    ("model", "r.model_start", "r.model_end"),
    ("result write", "r.model_end", "r.written"),
    ("wake-up + read (to API worker)", "r.written", "r.complete"),
    ("future resolved, API returns", "r.complete", "api_done"),
    ("encode", "api_done", "encoded"),
)


def traced_breakdown(url: str, body: bytes, ctype: str, n: int = 300, warmup: int = 50) -> dict[str, float]:
    """p50 of each stage of one request (ms), from the timestamps the server records along the path.

    Sends `n` sequential requests on one keep-alive connection with ``X-Shmserve-Trace: 1``; the
    API worker answers with its parse/decode/encode times and the runner call's own trace.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    samples: dict[str, list[float]] = {name: [] for name, _, _ in TRACE_STAGES}
    samples["total in server"] = []
    try:
        for i in range(n + warmup):
            conn.request("POST", parts.path, body, {"Content-Type": ctype, "X-Shmserve-Trace": "1"})
            resp = conn.getresponse()
            resp.read()
            header = resp.getheader("x-shmserve-trace")
            if i < warmup or header is None:
                continue
            t = json.loads(header)
            if not t.get("runners"):
                continue
            points = dict(t)
            points.update({f"r.{k}": v for k, v in t["runners"][0].items() if isinstance(v, float)})
            for name, a, b in TRACE_STAGES:
                samples[name].append((points[b] - points[a]) * 1e3)
            samples["total in server"].append((points["encoded"] - points["begin"]) * 1e3)
    finally:
        conn.close()
    return {k: median(v) for k, v in samples.items() if v}


def codec_costs(reps: int = 2000) -> dict[str, float]:
    """µs of the API path's decode/encode operations, measured here (no server involved)."""
    import io

    import orjson

    json_body = (bench_dir() / "body_array.json").read_bytes()
    npy_body = (bench_dir() / "body.npy").read_bytes()
    y = np.zeros((1, 10), np.float32)

    def clock(fn: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e6

    return {
        "decode JSON (orjson + np.asarray)": clock(lambda: np.asarray(orjson.loads(json_body), dtype=np.float32)),
        "decode .npy (np.load)": clock(lambda: np.load(io.BytesIO(npy_body))),
        "encode JSON (orjson, numpy)": clock(lambda: orjson.dumps(y, option=orjson.OPT_SERIALIZE_NUMPY)),
    }


def _load_matrix(url: str, plan: HttpPlan, bodies: tuple[str, ...], sweep: bool) -> dict[str, wrk.WrkResult]:
    out: dict[str, wrk.WrkResult] = {}
    for body in bodies:
        path, ctype = wrk.bodies()[body]
        counts = sorted(set(plan.connections) | (set(plan.sweep) if sweep and body == "json" else set()))
        for c in counts:
            d = plan.duration_s if c in plan.connections else plan.sweep_duration_s
            out[f"{body}.c{c}"] = wrk.run(url, path, ctype, c, d)
    return out


def run(rs: ResultSet, plan: HttpPlan, peers: tuple[str, ...], check_only: bool = False) -> None:
    """Measure HTTP, start-up and memory figures into `rs`."""
    if not wrk.available():
        rs.skip("http", "wrk is not installed (apt-get install wrk)")
        return
    why = serve_available()
    if why:
        rs.skip("http", why)
        return
    bodies = ("json", "npy")
    if check_only:
        port = free_port()
        proc, _ = start_shmserve(port, LOG_DIR / "check_serve.log")
        try:
            verify(f"http://127.0.0.1:{port}{plan.route}", bodies)
        finally:
            stop(proc)
        return
    trivial_port = free_port()
    trivial = start_trivial(trivial_port)
    runs: dict[str, list[wrk.WrkResult]] = {}
    startups: list[float] = []
    mem_rows: list[list[dict[str, Any]]] = []
    breakdowns: list[dict[str, float]] = []
    traced: list[dict[str, float]] = []
    try:
        for i in range(plan.passes):
            json_path, json_ctype = wrk.bodies()["json"]
            for c in plan.connections:
                runs.setdefault(f"trivial.c{c}", []).append(
                    wrk.run(f"http://127.0.0.1:{trivial_port}/", json_path, json_ctype, c, plan.trivial_duration_s,
                            cpu=calibration_cpus()[0]))
            port = free_port()
            proc, startup = start_shmserve(port, LOG_DIR / f"serve_pass{i}.log")
            startups.append(startup)
            try:
                url = f"http://127.0.0.1:{port}{plan.route}"
                verify(url, bodies)
                wrk.run(url, json_path, json_ctype, 8, 1)  # warm-up
                metrics_url = f"http://127.0.0.1:{port}/metrics"
                before = scrape(metrics_url)
                one = wrk.run(url, json_path, json_ctype, 1, plan.duration_s)
                breakdowns.append(metrics_breakdown(before, scrape(metrics_url), one.latency_ms.get("mean", 0.0)))
                traced.append(traced_breakdown(url, Path(json_path).read_bytes(), json_ctype))
                for key, res in _load_matrix(url, plan, bodies, sweep=(i == 0)).items():
                    runs.setdefault(f"shmserve.{key}", []).append(res)
                mem_rows.append(memory_tree(proc.pid, roles_from_log(LOG_DIR / f"serve_pass{i}.log")))
            finally:
                stop(proc)
    finally:
        stop(trivial)
    _record(rs, runs, plan, startups, mem_rows, breakdowns)
    if traced:
        rs.extras["http_trace_breakdown_ms"] = {k: median([t.get(k, np.nan) for t in traced]) for k in traced[0]}
    rs.extras["codec_costs_us"] = codec_costs()
    for name in peers:
        _run_peer(rs, name, plan)
    _issue3(rs)  # after the peers: the Mosec ratio uses Mosec measured in this run when there is one


def _wrk_figures(rs: ResultSet, prefix: str, key: str, res: list[wrk.WrkResult], calib_key: str | None) -> None:
    # Throughput is divided by the trivial server's at the same connection count. Latencies
    # (p50 and p99) are divided by its one-connection p50, pinned across CPUs: its own p50
    # and p99 at 32 or 128 connections are scheduler noise on a shared 2-core machine
    # (0.1 ms in one run, 0.19 ms in the next; p99 anywhere from 0.1 to 6 ms).
    rps_cal = f"calib.http_trivial_{calib_key}_rps" if calib_key else None
    lat_cal = LATENCY_CALIBRATION if calib_key else None
    errors = sum(r.errors for r in res)
    detail = {"errors": errors, "requests": sum(r.requests for r in res)}
    rs.add(Figure.from_passes(f"{prefix}.{key}_rps", [r.rps for r in res], "req/s", "higher",
                              calibration=rps_cal, detail=detail))
    rs.add(Figure.from_passes(f"{prefix}.{key}_p50_ms", [r.latency_ms.get("p50", np.nan) for r in res], "ms",
                              "lower", calibration=lat_cal,
                              p99=median([r.latency_ms.get("p99", np.nan) for r in res])))
    rs.add(Figure.from_passes(f"{prefix}.{key}_p99_ms", [r.latency_ms.get("p99", np.nan) for r in res], "ms",
                              "lower", calibration=lat_cal))


def _record(rs: ResultSet, runs: dict[str, list[wrk.WrkResult]], plan: HttpPlan, startups: list[float],
            mem_rows: list[list[dict[str, Any]]], breakdowns: list[dict[str, float]]) -> None:
    for c in plan.connections:
        res = runs[f"trivial.c{c}"]
        rs.add_calibration(Figure.from_passes(f"calib.http_trivial_c{c}_rps", [r.rps for r in res], "req/s", "higher"))
        for m in ("p50", "p99"):
            rs.add_calibration(Figure.from_passes(f"calib.http_trivial_c{c}_{m}_ms",
                                                  [r.latency_ms.get(m, np.nan) for r in res], "ms", "lower"))
    curve = []
    for key, res in sorted(runs.items()):
        if not key.startswith("shmserve."):
            continue
        _, body, conns = key.split(".")
        c = int(conns[1:])
        # sweep points (one pass, for the curve) are kept apart from the gated matrix
        prefix = "http" if c in plan.connections else "http_sweep"
        _wrk_figures(rs, prefix, f"{body}.{conns}", res, conns if c in plan.connections else None)
        curve.append({"system": "shmserve", "body": body, "connections": c, "rps": median([r.rps for r in res]),
                      **{m: median([r.latency_ms.get(m, np.nan) for r in res]) for m in ("p50", "p75", "p90", "p99")}})
    rs.extras.setdefault("http_curve", []).extend(curve)
    rs.add(Figure.from_passes("service.startup_s", startups, "s", "lower", calibration="calib.python_numpy_start_s"))
    _record_memory(rs, mem_rows)
    if breakdowns:
        keys = breakdowns[0].keys()
        rs.extras["http_breakdown_ms"] = {k: median([b.get(k, np.nan) for b in breakdowns]) for k in keys}


def _record_memory(rs: ResultSet, mem_rows: list[list[dict[str, Any]]]) -> None:
    mem_rows = [rows for rows in mem_rows if rows]
    if not mem_rows:
        rs.skip("memory", "could not read /proc/<pid>/smaps_rollup of the service's processes")
        return
    rs.extras["memory_processes"] = mem_rows[-1]
    for metric in ("pss_mb", "uss_mb", "rss_mb"):
        by_role: dict[str, list[list[float]]] = {}
        for rows in mem_rows:
            per: dict[str, list[float]] = {}
            for row in rows:
                per.setdefault(row["role"], []).append(row[metric])
            for role, values in per.items():
                by_role.setdefault(role, []).append(values)
        for role, passes in by_role.items():
            if role in ("resource_tracker", "other"):
                continue
            # an idle python's RSS is steady; its PSS is not (shared pages are split with every
            # other python on the host), so every memory figure is divided by the RSS
            calib = "calib.python_numpy_rss_mb"
            rs.add(Figure.from_passes(f"memory.{role}_{metric}", [float(np.mean(v)) for v in passes], "MB", "lower",
                                      calibration=calib, detail={"processes": len(passes[-1])}))
    totals = [sum(r["pss_mb"] for r in rows) for rows in mem_rows]
    rs.add(Figure.from_passes("memory.service_total_pss_mb", totals, "MB", "lower",
                              calibration="calib.python_numpy_rss_mb"))


def _issue3(rs: ResultSet) -> None:
    f = rs.figures
    if "http.json.c32_rps" in f:
        mosec = f.get("peers.mosec.json.c32_rps")
        ref = mosec.value if mosec else MOSEC_REF_C32_RPS
        fig = Figure(name="issue3.json_c32_rps_over_mosec", value=f["http.json.c32_rps"].value / ref, unit="x",
                     better="higher", target=">= 3x Mosec at 32 connections (issue 3)",
                     detail={"mosec_rps": ref, "mosec_source": "measured this run" if mosec else "DESIGN.md reference"})
        fig.target_met = fig.value >= 3.0
        rs.add(fig)
    if "http.json.c32_p99_ms" in f:
        p99 = f["http.json.c32_p99_ms"]
        fig = Figure.from_passes("issue3.json_c32_p99_ms", p99.passes, "ms", "lower",
                                 target="< 20 ms (2 x max_latency_ms, issue 3)")
        fig.target_met = p99.value < 20.0
        rs.add(fig)
    if "http.json.c1_p50_ms" in f:
        p50 = f["http.json.c1_p50_ms"]
        fig = Figure.from_passes("issue3.json_c1_p50_ms", p50.passes, "ms", "lower",
                                 target="< 1 ms at one connection (issue 3)")
        fig.target_met = p50.value < 1.0
        rs.add(fig)


def _run_peer(rs: ResultSet, name: str, plan: HttpPlan) -> None:
    from .peers.servers import PEERS

    spec = next((p for p in PEERS if p.name == name), None)
    if spec is None:
        rs.skip(f"peers.{name}", f"unknown peer {name!r}")
        return
    if not spec.installed():
        rs.skip(f"peers.{name}", f"not installed: run `bash perf/peers/install.sh {name}`")
        return
    port = free_port()
    log = LOG_DIR / f"peer_{name}.log"
    t0 = time.monotonic()
    proc = spec.start(port, log)
    url = f"http://127.0.0.1:{port}{spec.route}"
    try:
        _wait_peer(spec, port, url, proc)
        startup = time.monotonic() - t0
        verify(url, spec.bodies)
        json_path, json_ctype = wrk.bodies()["json"]
        wrk.run(url, json_path, json_ctype, 8, 1)
        matrix = _load_matrix(url, plan, spec.bodies, sweep=True)
        mem = memory_tree(proc.pid)
    except Exception as exc:  # a broken peer must not sink the suite
        rs.skip(f"peers.{name}", f"failed: {type(exc).__name__}: {exc} (log: {log})")
        return
    finally:
        stop(proc, group=True)
    for key, res in matrix.items():
        c = int(key.split(".c")[1])
        _wrk_figures(rs, f"peers.{name}" if c in plan.connections else f"peers_sweep.{name}", key, [res],
                     f"c{c}" if c in plan.connections else None)
        rs.extras.setdefault("http_curve", []).append(
            {"system": name, "body": key.split(".")[0], "connections": c, "rps": res.rps,
             **{m: res.latency_ms.get(m, np.nan) for m in ("p50", "p75", "p90", "p99")}})
    rs.add(Figure.from_passes(f"peers.{name}.startup_s", [startup], "s", "lower",
                              calibration="calib.python_numpy_start_s"))
    rs.add(Figure.from_passes(f"peers.{name}.memory_total_pss_mb", [sum(r["pss_mb"] for r in mem)], "MB", "lower",
                              calibration="calib.python_numpy_rss_mb"))
    rs.meta.setdefault("peers", {})[name] = spec.version()


def _wait_peer(spec: Any, port: int, url: str, proc: subprocess.Popen) -> None:
    if spec.ready_path:
        wait_http(f"http://127.0.0.1:{port}{spec.ready_path}", 120, proc)
        return
    path, ctype = wrk.bodies()["json"]
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with code {proc.returncode}")
        try:
            post(url, path.read_bytes(), ctype, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{spec.name} did not answer within 120 s") from None
            time.sleep(0.1)
