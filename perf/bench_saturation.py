"""Saturation: shmserve against Mosec (and Triton, when installed) where batches fill, side by side in one run.

Servers of the benchmark MLP with the same batching (64 items, 10 ms), one
front process and one model process each:

- ``shmserve``: ``shmserve serve examples.service_mlp:svc --api-workers 1``
  from this checkout (one API worker, one runner worker), and from every
  ``--tree PATH`` or ``--rev REV`` (a ``git archive`` of that revision), so a
  change is measured beside what it replaces;
- ``mosec``: ``perf/peers/mosec_server.py`` (Rust HTTP front, one Python
  worker), when ``bash perf/peers/install.sh mosec`` has installed it;
- Triton through PyTriton only when its venv exists (``install.sh pytriton``);
  its HTTP API is the v2 protocol, measured by ``perf/bench_v2.py``; this
  benchmark notes it and skips it.

Each round starts every server (order rotated per round), checks its answer,
warms it up, then runs ``wrk -t1 --latency`` for ``--duration`` seconds at
each of 64, 128 and 256 connections with two bodies: ``json`` (a (1, 784)
JSON array) and ``raw`` (its 3,136 float32 bytes; ours as
``application/octet-stream`` with ``X-Tensor-Dtype``/``X-Tensor-Shape``,
Mosec's worker reads the bytes as rows of 784). Around every wrk run the
utime + stime of every process of the server (``/proc/<pid>/stat``, all
threads) is read, and its delta divided by the requests served gives **CPU µs
per request per process**: API worker, runner worker, supervisor (Mosec:
front, worker, supervisor). That figure moves less with the machine's load
than req/s and latencies, which move a lot on a shared machine (read their
ranges). Also per process: **wake-ups per request**, the voluntary context
switches of all its threads over the run divided by requests (how often it
slept on a doorbell, a semaphore or epoll and was woken).

Prints medians over rounds (req/s, p50, p99, CPU µs/request) and the ratio
shmserve/Mosec per round (median and range), and writes
``perf/results/saturation_<stamp>.json``::

    python -m perf.bench_saturation --rounds 3 --duration 5
    python -m perf.bench_saturation --rev main --rounds 3     # before (main) and after (this tree)
    python -m perf.bench_saturation --api-workers 1,2 --no-mosec   # API workers per core
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import wrk
from .bench_operable import export_tree
from .env import REPO, THREAD_ENV, bench_dir
from .process_cost import per_request, shmserve_roles, snapshot
from .procs import cmdline, descendants, free_port, stop, wait_http
from .stats import median

__all__ = ["main", "Server"]

SERVICE = "examples.service_mlp:svc"
CONNECTIONS = (64, 128, 256)
SCRIPT = Path(__file__).resolve().parent / "saturation_post.lua"
MAX_LATENCY_MS = 10.0
@dataclass
class Server:
    """One server under test: how to start it, where to POST, and which process plays which role."""

    name: str
    start: Any  # (port, log) -> Popen, ready to serve
    route: str
    roles: Any  # (root pid, log) -> {pid: role}
    proc: subprocess.Popen | None = None
    pids: dict[int, str] = field(default_factory=dict)


def _shmserve(tree: Path, api_workers: int = 1) -> Any:
    def start(port: int, log: Path) -> subprocess.Popen:
        env = dict(os.environ, **THREAD_ENV)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(bench_dir())])
        for var in ("SHMSERVE_CONFIG", "SHMSERVE_CONFIG_OPTIONS"):
            env.pop(var, None)
        # A runtime directory of its own: runner names are unique per directory, and other
        # servers of this user (a runner called "mlp", say) must not clash with this one.
        env["SHMSERVE_RUNTIME_DIR"] = str(log.parent / "run")
        (log.parent / "run").mkdir(mode=0o700, exist_ok=True)
        cmd = [sys.executable, "-m", "shmserve.cli", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port),
               "--api-workers", str(api_workers)]
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
        except Exception:
            stop(proc)
            raise RuntimeError(f"shmserve ({tree}) did not get ready; see {log}") from None
        return proc
    return start


def _mosec() -> Server | None:
    from .peers.servers import PEERS, PEERS_DIR

    spec = next(p for p in PEERS if p.name == "mosec")
    if not spec.installed():
        return None

    def start(port: int, log: Path) -> subprocess.Popen:
        proc = spec.start(port, log)
        deadline = time.monotonic() + 120
        body = (bench_dir() / "body_array.json").read_bytes()
        while True:  # Mosec has no readiness endpoint: POST until it answers
            if proc.poll() is not None:
                raise RuntimeError(f"mosec exited with code {proc.returncode}; see {log}")
            try:
                _post(f"http://127.0.0.1:{port}{spec.route}", body, "application/json", timeout=2)
                return proc
            except OSError:
                if time.monotonic() > deadline:
                    stop(proc, group=True)
                    raise TimeoutError(f"mosec did not answer within 120 s; see {log}") from None
                time.sleep(0.1)

    def roles(root: int, log: Path) -> dict[int, str]:
        out = {root: "supervisor"}
        for pid in descendants(root):
            cmd = cmdline(pid)
            if "resource_tracker" in cmd:
                out[pid] = "resource_tracker"
            elif cmd.split(" ", 1)[0].endswith("/mosec"):
                out[pid] = "front"
            elif "spawn_main" in cmd:
                out[pid] = "worker"
            else:
                out[pid] = "other"
        return out

    assert PEERS_DIR.exists()
    return Server("mosec", start, spec.route, roles)


def _post(url: str, body: bytes, ctype: str, headers: dict[str, str] | None = None, timeout: float = 10) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype, **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def bodies(scratch: Path) -> dict[str, tuple[Path, str, dict[str, str]]]:
    """name -> (file, content type, wrk script environment): the JSON array and its raw float32 bytes."""
    json_path = bench_dir() / "body_array.json"
    x = np.asarray(json.loads(json_path.read_bytes()), dtype=np.float32)
    raw = scratch / "body.f32"
    raw.write_bytes(x.tobytes())
    shape = ",".join(str(n) for n in x.shape)
    return {
        "json": (json_path, "application/json", {}),
        "raw": (raw, "application/octet-stream", {"DTYPE": "float32", "SHAPE": shape}),
    }


def verify(url: str, body_set: dict[str, tuple[Path, str, dict[str, str]]]) -> None:
    """Each body's answer is the MLP of the common workload (so both servers do the same work)."""
    from workload import MLP

    x = np.asarray(json.loads((bench_dir() / "body_array.json").read_bytes()), dtype=np.float32)
    want = MLP()(x.reshape(-1, 784))
    for name, (path, ctype, env) in body_set.items():
        headers = {"X-Tensor-Dtype": env["DTYPE"], "X-Tensor-Shape": env["SHAPE"]} if env else {}
        got = np.asarray(json.loads(_post(url, path.read_bytes(), ctype, headers)), dtype=np.float32)
        if got.size != want.size or not np.allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4):
            raise AssertionError(f"{url} answered the {name} body with {got!r}, expected {want!r}")


def run_log(scratch: Path, server: str, round_: int) -> Path:
    """The log of one server start: its own file, because the roles are read from the log's pid lines
    and its "serving" line, and a log shared across rounds holds the previous round's."""
    return scratch / f"{server.replace('/', '_').replace('@', '_')}.round{round_ + 1}.log"


def measure(server: Server, body_set: dict[str, Any], connections: tuple[int, ...], duration: float,
            log: Path) -> dict[str, Any]:
    """Start `server`, then one wrk run per (body, connections) with CPU per request per role."""
    if log.exists():
        raise ValueError(f"{log} exists: each server start needs a log of its own (its roles are read from it)")
    port = free_port()
    proc = server.start(port, log)
    url = f"http://127.0.0.1:{port}{server.route}"
    out: dict[str, Any] = {}
    try:
        verify(url, body_set)
        pids = server.roles(proc.pid, log)
        for body, (path, ctype, env) in body_set.items():
            wrk.run(url, path, ctype, 16, 1.0, script=SCRIPT, script_env=env)  # warm-up
            for c in connections:
                before = snapshot(pids)
                res = wrk.run(url, path, ctype, c, duration, script=SCRIPT, script_env=env)
                cpu, woken = per_request(pids, before, snapshot(pids), res.requests)
                out[f"{body}.c{c}"] = {"rps": res.rps, "p50_ms": res.latency_ms.get("p50"),
                                       "p99_ms": res.latency_ms.get("p99"), "requests": res.requests,
                                       "errors": res.errors, "cpu_us_per_request": cpu,
                                       "wakeups_per_request": woken}
    finally:
        stop(proc, group=server.name == "mosec")
    return out


def _table(names: list[str], runs: dict[str, list[dict[str, Any]]], keys: list[str]) -> tuple[str, dict[str, Any]]:
    lines = []
    summary: dict[str, Any] = {}
    head = f"{'':12}" + "".join(f"{n:>34}" for n in names)
    lines.append(head)
    lines.append(f"{'':12}" + "".join(f"{'req/s   p50 ms   p99 ms  err':>34}" for _ in names))
    for key in keys:
        row = f"{key:12}"
        for n in names:
            rr = [r[key] for r in runs[n] if key in r]
            fig = {m: median([x[m] for x in rr]) for m in ("rps", "p50_ms", "p99_ms")}
            fig["rps_range"] = [min(x["rps"] for x in rr), max(x["rps"] for x in rr)] if rr else []
            fig["errors"] = sum(x["errors"] for x in rr)
            roles = sorted({role for x in rr for role in x["cpu_us_per_request"]})
            fig["cpu_us_per_request"] = {role: median([x["cpu_us_per_request"].get(role, np.nan) for x in rr])
                                         for role in roles}
            fig["wakeups_per_request"] = {role: median([x.get("wakeups_per_request", {}).get(role, np.nan)
                                                        for x in rr]) for role in roles}
            summary.setdefault(n, {})[key] = fig
            row += f"{fig['rps']:>14.0f} {fig['p50_ms']:>8.2f} {fig['p99_ms']:>8.2f} {fig['errors']:>4}"
        lines.append(row)
    lines.append("")
    lines.append("CPU µs per request (median over rounds), per process role")
    for n in names:
        for key in keys:
            cpu = summary[n][key]["cpu_us_per_request"]
            total = sum(v for v in cpu.values() if np.isfinite(v))
            lines.append(f"  {n:28} {key:10} " + "  ".join(f"{r} {v:6.1f}" for r, v in cpu.items())
                         + f"  | total {total:6.1f}")
    lines.append("")
    lines.append("wake-ups per request (voluntary context switches of all threads / requests), per process role")
    for n in names:
        for key in keys:
            woken = summary[n][key]["wakeups_per_request"]
            lines.append(f"  {n:28} {key:10} " + "  ".join(f"{r} {v:5.2f}" for r, v in woken.items()))
    return "\n".join(lines), summary


def _ratios(names: list[str], runs: dict[str, list[dict[str, Any]]], keys: list[str]) -> tuple[str, dict[str, Any]]:
    if "mosec" not in runs:
        return "", {}
    lines = ["", "req/s ratio to Mosec, per round (servers of one round ran within minutes): median [min-max]"]
    out: dict[str, Any] = {}
    for n in names:
        if n == "mosec":
            continue
        for key in keys:
            per = [a[key]["rps"] / b[key]["rps"] for a, b in zip(runs[n], runs["mosec"]) if key in a and key in b]
            if per:
                out.setdefault(n, {})[key] = {"median": median(per), "min": min(per), "max": max(per)}
                lines.append(f"  {n:28} {key:10} {median(per):.3f} [{min(per):.3f}-{max(per):.3f}]")
    return "\n".join(lines), out


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m perf.bench_saturation", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per (body, connections)")
    p.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    p.add_argument("--bodies", default="json,raw")
    p.add_argument("--tree", action="append", type=Path, default=[], help="another checkout to serve (repeatable)")
    p.add_argument("--rev", action="append", default=[], help="a git revision to serve beside this tree (repeatable)")
    p.add_argument("--api-workers", default="1", help="comma list: serve this tree once per API worker count "
                                                     "(e.g. 1,2; --tree/--rev checkouts get one)")
    p.add_argument("--no-mosec", action="store_true")
    p.add_argument("--no-this-tree", action="store_true", help="serve only the --tree/--rev checkouts")
    args = p.parse_args(argv)
    if not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk")
    sys.path.insert(0, str(bench_dir()))
    conns = tuple(int(c) for c in args.connections.split(","))
    notes: list[str] = ["the machine is shared: req/s and latencies move with its load; CPU µs/request much less"]
    triton = REPO / "perf" / "peers" / ".venvs" / "pytriton"
    notes.append("Triton (PyTriton) " + ("is installed; its v2 HTTP API is measured by perf/bench_v2.py, not here"
                                         if triton.exists() else "is not installed (bash perf/peers/install.sh "
                                         "pytriton): skipped"))
    with tempfile.TemporaryDirectory(prefix="shmserve-bench-saturation-") as tmp:
        scratch = Path(tmp)
        body_set = {k: v for k, v in bodies(scratch).items() if k in args.bodies.split(",")}
        servers: list[Server] = []
        if not args.no_this_tree:
            for n in (int(x) for x in args.api_workers.split(",")):
                name = "shmserve" if n == 1 else f"shmserve_{n}api"
                servers.append(Server(name, _shmserve(REPO, n), "/predict", shmserve_roles))
        for tree in args.tree:
            servers.append(Server(f"shmserve@{tree}", _shmserve(tree.resolve()), "/predict", shmserve_roles))
        for rev in args.rev:
            into = scratch / f"rev_{len(servers)}"
            into.mkdir()
            export_tree(rev, into)
            servers.append(Server(f"shmserve@{rev}", _shmserve(into / "src"), "/predict", shmserve_roles))
        mosec = None if args.no_mosec else _mosec()
        if mosec is not None:
            servers.append(mosec)
        elif not args.no_mosec:
            notes.append("Mosec is not installed (bash perf/peers/install.sh mosec): skipped")
        names = [s.name for s in servers]
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for server in order:
                log = run_log(scratch, server.name, r)
                t0 = time.monotonic()
                runs[server.name].append(measure(server, body_set, conns, args.duration, log))
                print(f"round {r + 1}/{args.rounds} {server.name}: {time.monotonic() - t0:.0f} s, "
                      + ", ".join(f"{k} {v['rps']:.0f}" for k, v in runs[server.name][-1].items()), flush=True)
    keys = [f"{b}.c{c}" for b in body_set for c in conns]
    table, summary = _table(names, runs, keys)
    ratio_text, ratios = _ratios(names, runs, keys)
    print("\n" + "\n".join("note: " + n for n in notes))
    print(f"load average at the end: {os.getloadavg()}; p99 goal: at most {2 * MAX_LATENCY_MS:g} ms (2 x max_latency_ms)")
    print(table + ratio_text)
    out = REPO / "perf" / "results" / f"saturation_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "notes": notes,
                               "load_average": os.getloadavg(), "summary": summary, "ratios_to_mosec": ratios,
                               "runs": runs}, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
