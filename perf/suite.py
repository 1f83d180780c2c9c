"""Run the benchmark sections of one mode and write the result file and report."""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import calibration as cal
from .env import REPO, bench_dir, metadata
from .plan import PLANS, Plan
from .results import Figure, ResultSet

RESULTS = REPO / "perf" / "results"
SECTIONS = ("transport", "batching", "http")


def core_available() -> str | None:
    """None when `shmserve.start` (the shared-memory core) is importable; otherwise why not."""
    try:
        import shmserve

        shmserve.start  # noqa: B018  (lazy attribute: imports the supervisor)
    except Exception as exc:  # ImportError, AttributeError, or a broken module
        return f"shmserve.start is not available yet ({type(exc).__name__}: {exc})"
    return None


def _peers(arg: str | None, plan: Plan) -> tuple[str, ...]:
    from .peers.servers import PEERS

    if arg is None:
        return plan.peers_default
    if arg == "none":
        return ()
    if arg == "auto":
        return tuple(p.name for p in PEERS)
    return tuple(x.strip() for x in arg.split(",") if x.strip())


def _host_calibration(rs: ResultSet, passes: int) -> None:
    rs.add_calibration(Figure.from_passes("calib.memcpy_GBps", [cal.memcpy_bandwidth() for _ in range(passes)],
                                          "GB/s", "higher"))
    rs.add_calibration(Figure.from_passes("calib.python_numpy_start_s", [cal.python_startup(3) for _ in range(passes)],
                                          "s", "lower"))
    mems = [cal.idle_python_memory() for _ in range(2)]
    rs.add_calibration(Figure.from_passes("calib.python_numpy_pss_mb", [m.get("pss_mb", float("nan")) for m in mems],
                                          "MB", "lower"))
    rs.add_calibration(Figure.from_passes("calib.python_numpy_rss_mb", [m.get("rss_mb", float("nan")) for m in mems],
                                          "MB", "lower"))


def _transport_calibration_only(rs: ResultSet, plan: Plan) -> None:
    """Without the core, still measure the transport's calibration figures."""
    raw: dict[str, list[dict[str, float]]] = {}
    with cal.PipeEcho() as pipe:
        for _ in range(plan.transport_passes):
            raw.setdefault("pingpong", []).append(cal.semaphore_pingpong(plan.pingpong_rounds))
            for size in plan.sizes:
                raw.setdefault(f"memcpy_{size}", []).append(cal.memcpy_time(size, plan.transport_budget_s / 2))
                raw.setdefault(f"pipe_{size}", []).append(cal.pipe_round_trips(pipe, size, plan.transport_budget_s))
    from .bench_transport import _fig

    rs.add_calibration(_fig(raw, "pingpong", "calib.pingpong_us"))
    for size in plan.sizes:
        rs.add_calibration(_fig(raw, f"memcpy_{size}", f"calib.memcpy_{size}_us"))
        rs.add_calibration(_fig(raw, f"pipe_{size}", f"calib.pipe_pickle_rtt_{size}_us"))


def run_suite(mode: str, only: str = "", peers: str | None = None, out: str | None = None,
              report: bool = True) -> int:
    """Run `mode` ("quick", "full" or "check"); return the process exit code."""
    plan = PLANS[mode]
    sections = tuple(s.strip() for s in only.split(",") if s.strip()) or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s) {sorted(unknown)}: choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(bench_dir()))  # the common workload's `workload` module
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(bench_dir()),
                                                           os.environ.get("PYTHONPATH", "")) if p)
    # A runtime directory of our own: runner names are unique per runtime directory, and other
    # people's servers on this host (a runner called "mlp", say) must not clash with ours.
    runtime_dir = tempfile.mkdtemp(prefix="shmserve-perf-")
    os.environ["SHMSERVE_RUNTIME_DIR"] = runtime_dir
    try:
        return _run(mode, plan, sections, peers, out, report)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _run(mode: str, plan: Plan, sections: tuple[str, ...], peers: str | None, out: str | None,
         report: bool) -> int:
    check = mode == "check"
    t_start = time.monotonic()
    rs = ResultSet(mode, metadata(mode))
    rs.meta["passes"] = {"transport": plan.transport_passes, "batching": plan.batching_passes,
                         "http": plan.http.passes}
    failures: list[str] = []
    missing_core = core_available()
    if not check:
        _host_calibration(rs, 3 if mode == "full" else 2)

    def section(name: str, fn: object) -> None:
        if name not in sections:
            return
        print(f"[perf] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            rs.skip(name, f"failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"[perf] {name} done in {time.monotonic() - t0:.1f} s", flush=True)

    if missing_core:
        for name in ("transport", "batching"):
            rs.skip(name, missing_core)
        if not check:
            section("transport", lambda: _transport_calibration_only(rs, plan))
    else:
        from . import bench_batching, bench_transport

        section("transport", lambda: bench_transport.run(rs, plan.transport_passes, plan.transport_budget_s,
                                                         plan.sizes, plan.pingpong_rounds, check_only=check))
        section("batching", lambda: bench_batching.run(rs, plan.batching_passes, plan.batching_duration_s,
                                                       plan.callers, check_only=check))
    from . import bench_http

    peer_names = _peers(peers, plan)
    if "http" in sections and not check:
        all_peers = {"bentoml", "mosec"}
        for name in sorted(all_peers - set(peer_names)):
            rs.skip(f"peers.{name}", "not requested (use --peers auto, or --full)")
    section("http", lambda: bench_http.run(rs, plan.http, peer_names, check_only=check))
    rs.meta["duration_s"] = time.monotonic() - t_start
    if check:
        for what, why in rs.skipped.items():
            print(f"[perf] check skipped {what}: {why}")
        print(f"[perf] check: {'FAILED: ' + '; '.join(failures) if failures else 'all correctness parts passed'}")
        return 1 if failures else 0
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) if out else RESULTS / f"{stamp}_{mode}.json"
    rs.save(path)
    print(f"[perf] results: {path}")
    if report and out is None:  # an explicit --out (a baseline, say) gets no report beside it
        from .report import write

        md = write(rs, path.with_suffix(".md"))
        print(f"[perf] report: {md}")
    print(summary(rs))
    return 1 if failures else 0


def summary(rs: ResultSet) -> str:
    """A short table of the headline figures for the terminal."""
    from .report import _fmt

    lines = ["", f"{'figure':44} {'median':>10} {'p99':>10} {'unit':8} {'ratio':>8} {'spread':>7}  target"]
    for f in rs.figures.values():
        if f.name.startswith("peers.") and not f.name.endswith(("c32_rps", "c1_p50_ms")):
            continue
        tgt = ""
        if f.target:
            tgt = f"{f.target} -> {'met' if f.target_met else 'MISSED' if f.target_met is False else '?'}"
            if f.target_met is not None and f.spread > 0.5:
                tgt += " (noisy)"
        lines.append(f"{f.name:44} {_fmt(f.value):>10} {_fmt(f.p99):>10} {f.unit:8} {_fmt(f.ratio):>8} "
                     f"{f.spread * 100:6.0f}%  {tgt}")
    for what, why in rs.skipped.items():
        lines.append(f"skipped {what}: {why}")
    return "\n".join(lines)
