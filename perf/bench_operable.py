"""What the operational features cost on the HTTP hot path, side by side in one run.

Three servers of the benchmark MLP (``examples.service_mlp:svc``, one API
worker, one runner worker), loaded in turn with wrk (JSON bodies) at 1 and 128
connections, the order rotated every round:

- ``before``: the tree just before these features (``git archive`` of that
  commit into a temporary folder; default: the parent of the commit that added
  ``shmserve/http/observe.py``);
- ``off``: this tree, every feature off (the defaults);
- ``on``: this tree with the JSON access log (every request) and tracing at a
  1% sample rate (console exporter: spans go to the server's log, like the
  access lines).

Around every wrk run the CPU time of each process of the server is read
(`perf.process_cost`, as `perf.bench_saturation` does): **CPU µs per request**
of the API worker (its access-log writer thread included), the runner worker
and the supervisor. On a shared machine req/s moves with the load by more than
the cost measured here; CPU per request moves far less, and on/off of the API
worker's CPU per request is the req/s ratio a CPU-bound API worker would give.

Prints, per connection count, the medians over the rounds of req/s, p50/p99
and CPU µs per request per process, and the ratios off/before and on/off of
req/s and of CPU per request (API worker, runner worker, all processes), each
taken per round and given as median [min-max]; the API worker's CPU per request
split between its event-loop thread and its other threads (the access-log and
span writer, the span exporter, the runner client's: `process_cost.per_thread_request`),
with their context switches per request; writes them to
``perf/results/operable_<stamp>.json``. With ``--instructions`` it first
counts an API worker's instructions per request, off and on, under callgrind
(`perf.callgrind_api`, both at once): a figure the machine's load does not
move, where req/s on a shared machine moves by more than the cost measured.
They are given for every thread and for the event loop's thread alone, with
what the worker does by the clock alone taken off (`callgrind_api.measure`
counts 10 s without requests: the event loop's tick, the runner client's 0.1 s
liveness poll, the access log writer's 0.1 s turn), since under valgrind every
second of serving lasts ~50 times longer than at full speed ("raw": not taken
off)::

    python -m perf.bench_operable --rounds 5 --duration 5 --instructions
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import callgrind_api, wrk
from .env import REPO, THREAD_ENV, bench_dir
from .process_cost import per_request, per_thread_request, shmserve_roles, snapshot, thread_snapshot
from .procs import free_port, stop, wait_http
from .stats import median, spread

SERVICE = "examples.service_mlp:svc"
CPU_ROLES = ("api_worker", "runner_worker", "supervisor", "total")
#: per request, of the API worker's event-loop thread and of its other threads (`process_cost.per_thread_request`)
THREAD_FIGURES = ("cpu_us", "user_us", "sys_us", "voluntary", "involuntary")
ROLE_NAMES = {"api_worker": "api", "runner_worker": "runner", "supervisor": "supervisor", "total": "total"}
ON_CONFIG = """\
api_server:
  logging:
    access: {enabled: true, format: json}
tracing: {exporter: console, sample_rate: 0.01}
"""


def before_commit() -> str:
    """The parent of the commit that added the operational features."""
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "shmserve/http/observe.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    if not out:
        raise SystemExit("cannot find the commit that added shmserve/http/observe.py; pass --before REV")
    return out[-1] + "^"


def export_tree(rev: str, into: Path) -> None:
    """Write the files of `rev` into `into` (git archive; no worktree is registered)."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev], cwd=REPO, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    archive.unlink()
    # Its C accelerators built as this tree's are (pip install -e . builds them): an exported tree served
    # without them would run the pure-Python twins and flatter every change measured against it.
    if (into / "src" / "shmserve" / "_native").is_dir():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into / "src", check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start(kind: str, tree: Path, port: int, log: Path) -> subprocess.Popen:
    """Start one server configuration and wait for /readyz (the same command line, plus --config for 'on')."""
    env = dict(os.environ, **THREAD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(bench_dir())])
    env.pop("SHMSERVE_CONFIG", None)
    env.pop("SHMSERVE_CONFIG_OPTIONS", None)
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port),
           "--api-workers", "1"]
    if kind == "on":
        config = log.with_suffix(".yaml")
        config.write_text(ON_CONFIG)
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 90, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"{kind} server did not get ready; see {log}") from None
    return proc


def measure(kind: str, tree: Path, connections: tuple[int, ...], duration: float, log: Path) -> dict[int, Any]:
    """One server: warm up, then wrk at each connection count, with CPU µs per request per process role."""
    port = free_port()
    proc = start(kind, tree, port, log)
    body, ctype = wrk.bodies()["json"]
    url = f"http://127.0.0.1:{port}/predict"
    try:
        pids = shmserve_roles(proc.pid, log)
        api = next((pid for pid, role in pids.items() if role == "api_worker"), None)
        wrk.run(url, body, ctype, 8, 1.0)  # warm-up: imports, first batches, allocator
        out = {}
        for c in connections:
            before, threads = snapshot(pids), thread_snapshot(api) if api is not None else {}
            res = wrk.run(url, body, ctype, c, duration)
            cpu, woken = per_request(pids, before, snapshot(pids), res.requests)
            if res.errors:
                raise RuntimeError(f"{kind} server: {res.errors} errors at {c} connections; see {log}")
            out[c] = {"rps": res.rps, "p50_ms": res.latency_ms.get("p50"), "p99_ms": res.latency_ms.get("p99"),
                      "requests": res.requests, "cpu_us_per_request": cpu, "wakeups_per_request": woken,
                      "api_threads_per_request": per_thread_request(api, threads, thread_snapshot(api), res.requests)
                      if api is not None else {}}
        return out
    finally:
        stop(proc)


def count_instructions(requests: int, warmup: int = 50, connections: int = 16) -> dict[str, dict[str, float]]:
    """Instructions per request of an API worker off and on (every thread, and the event loop's alone)."""
    def one(kind: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=f"shmserve-cg-{kind}-") as tmp:
            config = None
            if kind == "on":
                config = Path(tmp) / "shmserve.yaml"
                config.write_text(ON_CONFIG)
            return callgrind_api.measure(REPO, "json", requests, warmup, connections, Path(tmp), 0, config=config,
                                         per_thread=True)

    with ThreadPoolExecutor(2) as pool:  # side by side: counts do not depend on the load
        runs = dict(zip(("off", "on"), pool.map(one, ("off", "on"))))
    return {k: {"per_request": r["instructions_per_request"],
                "loop_per_request": r["per_thread_instructions_per_request"].get(1, 0.0),
                "raw_per_request": r["instructions_per_request_with_idle"],
                "raw_loop_per_request": r["per_thread_instructions_per_request_with_idle"].get(1, 0.0),
                "wall_s_under_valgrind": r["wall_s_under_valgrind"], "requests": r["requests"]}
            for k, r in runs.items()}


def instructions_line(fig: dict[str, dict[str, float]]) -> str:
    """One line: instructions per request off and on, with their ratios."""
    off, on = fig["off"], fig["on"]

    def pair(key: str) -> str:
        return f"off {off[key]:,.0f} on {on[key]:,.0f} (on/off {on[key] / off[key]:.3f})"

    return (f"instructions/request (callgrind, {on['requests']:.0f} requests each, idle rate taken off): "
            f"every thread {pair('per_request')}; event loop thread {pair('loop_per_request')}; "
            f"raw: every thread {pair('raw_per_request')}, event loop {pair('raw_loop_per_request')}")


def _spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and (max - min) / median of per-round values."""
    return {"median": median(values), "min": min(values), "max": max(values), "spread": spread(values)}


def _cpu(run: dict[str, Any], role: str) -> float:
    """CPU µs per request of one role in one run (role "total": the sum over the server's processes)."""
    cpu = run["cpu_us_per_request"]
    return float(sum(cpu.values())) if role == "total" else float(cpu.get(role, math.nan))


def figures(runs: dict[str, list[dict[int, Any]]], c: int) -> dict[str, Any]:
    """One connection count's figures over rounds: per kind req/s, latencies and CPU per request per role;
    the ratios off/before and on/off of req/s and of CPU per request, taken per round (the servers of one
    round ran within a minute of each other), as median, range and spread."""
    fig: dict[str, Any] = {}
    for k, kind_runs in runs.items():
        rr = [run[c] for run in kind_runs]
        fig[k] = {m: median([x[m] for x in rr]) for m in ("rps", "p50_ms", "p99_ms")}
        fig[k]["rps_over_rounds"] = _spread([x["rps"] for x in rr])
        fig[k]["cpu_us_per_request"] = {role: _spread([_cpu(x, role) for x in rr]) for role in CPU_ROLES}
        fig[k]["api_threads_per_request"] = {
            part: {m: _spread([x.get("api_threads_per_request", {}).get(part, {}).get(m, math.nan) for x in rr])
                   for m in THREAD_FIGURES} for part in ("loop", "others")}
    for name, a, b in (("off_over_before", "off", "before"), ("on_over_off", "on", "off")):
        pairs = list(zip(runs[a], runs[b]))
        fig[name] = _spread([x[c]["rps"] / y[c]["rps"] for x, y in pairs])
        fig[f"cpu_{name}"] = {role: _spread([_cpu(x[c], role) / _cpu(y[c], role) for x, y in pairs])
                              for role in ("api_worker", "runner_worker", "total")}
    return fig


def _r(f: dict[str, float], digits: int = 3) -> str:
    return f"{f['median']:.{digits}f} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]"


def summary_text(c: int, fig: dict[str, Any]) -> str:
    """The lines of one connection count: req/s with its ratios, then CPU per request with its ratios."""
    kinds = ("before", "off", "on")
    lines = [f"c={c:<4} req/s  " + "  ".join(f"{k} {fig[k]['rps']:8.0f}" for k in kinds)
             + f"   off/before {_r(fig['off_over_before'])}  on/off {_r(fig['on_over_off'])}",
             "       p99 ms " + "  ".join(f"{k} {fig[k]['p99_ms']:8.2f}" for k in kinds)
             + ";  p50 ms " + "  ".join(f"{k} {fig[k]['p50_ms']:.3f}" for k in kinds)]
    for k in kinds:
        cpu = fig[k]["cpu_us_per_request"]
        lines.append(f"       CPU µs/request {k:6} " + "  ".join(f"{ROLE_NAMES[role]} {_r(cpu[role], 1)}"
                                                              for role in CPU_ROLES))
    for k in kinds:
        th = fig[k]["api_threads_per_request"]
        lines.append(f"       API worker threads {k:6} " + "  ".join(
            f"{part} CPU µs {_r(th[part]['cpu_us'], 1)} (sys {th[part]['sys_us']['median']:.1f}, switches "
            f"vol {th[part]['voluntary']['median']:.3f} invol {th[part]['involuntary']['median']:.3f})"
            for part in ("loop", "others")) + " /request")
    for name in ("off_over_before", "on_over_off"):
        ratio = fig[f"cpu_{name}"]
        lines.append(f"       CPU/request {name.replace('_over_', '/'):10} " + "  ".join(
            f"{ROLE_NAMES[role]} {_r(ratio[role])}" for role in ("api_worker", "runner_worker", "total")))
    api = fig["cpu_on_over_off"]["api_worker"]["median"]
    lines.append(f"       req/s on/off a CPU-bound API worker would give (its CPU/request off/on): {1 / api:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m perf.bench_operable", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per connection count")
    p.add_argument("--before", default=None, help="git revision of the 'before' tree (default: see above)")
    p.add_argument("--connections", default="1,128")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions per request, off and on, under callgrind (valgrind)")
    p.add_argument("--instruction-requests", type=int, default=2000,
                   help="requests counted per setting (1%% of them are traced, at random: with 300 the count "
                        "of traced requests, and so the 'on' figure, moves by a third from run to run)")
    args = p.parse_args(argv)
    if not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if args.instructions and not shutil.which("valgrind"):
        raise SystemExit("--instructions needs valgrind: apt-get install valgrind")
    instructions = count_instructions(args.instruction_requests) if args.instructions else None
    if instructions is not None:
        print(instructions_line(instructions), flush=True)
    conns = tuple(int(c) for c in args.connections.split(","))
    rev = args.before or before_commit()
    kinds = ("before", "off", "on")
    runs: dict[str, list[dict[int, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="shmserve-bench-operable-") as tmp:
        tmpdir = Path(tmp)
        export_tree(rev, tmpdir)
        trees = {"before": tmpdir / "src", "off": REPO, "on": REPO}
        for r in range(args.rounds):
            order = kinds[r % 3:] + kinds[:r % 3]
            for kind in order:
                # a log per server run: its roles are read from the pids it logs
                log = tmpdir / f"{kind}_r{r + 1}.log"
                runs[kind].append(measure(kind, trees[kind], conns, args.duration, log))
                print(f"round {r + 1}/{args.rounds} {kind}: " + ", ".join(
                    f"c{c} {v['rps']:.0f} req/s p99 {v['p99_ms']:.2f} ms CPU µs/request "
                    + " ".join(f"{ROLE_NAMES.get(role, role)} {us:.1f}" for role, us in v["cpu_us_per_request"].items())
                    + " (API loop thread " + "/ other threads ".join(
                        f"{v['api_threads_per_request'].get(part, {}).get('cpu_us', math.nan):.1f}"
                        for part in ("loop", "others")) + ")"
                    for c, v in runs[kind][-1].items()), flush=True)
    summary: dict[str, Any] = {"before_rev": rev, "rounds": args.rounds, "duration_s": args.duration,
                               "on_config": ON_CONFIG, "figures": {}, "instructions": instructions}
    print("\nmedians over rounds [min-max] (this machine is shared and noisy: read the ranges; "
          "CPU per request moves far less with its load than req/s)")
    for c in conns:
        summary["figures"][str(c)] = fig = figures(runs, c)
        print(summary_text(c, fig))
    if instructions is not None:
        print(instructions_line(instructions))
    out = REPO / "perf" / "results" / f"operable_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
