"""`python -m perf report RESULT.json`: a Markdown page with tables and PNG plots.

Plots (matplotlib, imported lazily): latency percentiles against throughput
for each system and body (the latency-throughput curve), batch-size
distribution per caller count, round-trip time against tensor size on log
axes, and a latency breakdown of one request.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .results import Figure, ResultSet


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _target_row(f: Figure) -> str:
    met = {True: "met", False: "**missed**", None: "-"}[f.target_met]
    spread = f"{f.spread * 100:.0f}%" if f.passes and len(f.passes) > 1 else "-"
    if f.target_met is not None and f.spread > 0.5:
        met += " (passes disagree: noisy)"
    return f"| {f.name} | {_fmt(f.value)} {f.unit} | {f.target or '-'} | {met} | {spread} |"


def markdown(rs: ResultSet, plots: dict[str, str]) -> str:
    """The report text; `plots` maps plot names to PNG file names beside it."""
    m = rs.meta
    git = m.get("git", {})
    mach = m.get("machine", {})
    lines = [
        f"# shmserve performance report ({rs.mode})",
        "",
        f"- date: {m.get('date', '?')}; commit `{git.get('commit', '?')[:12]}`"
        f"{' (dirty tree)' if git.get('dirty') else ''}: {git.get('subject', '')}",
        f"- machine: {mach.get('cpu_model', '?')}, {mach.get('cpus', '?')} CPUs, "
        f"{mach.get('mem_total_mb', '?')} MB, kernel {mach.get('kernel', '?')}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in mach.get('loadavg', []))}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}",
        f"- passes: {m.get('passes', '?')}; every figure is the median of its passes; 'spread' is "
        "(max - min) / median across passes; ratios divide by calibration figures measured in the same run",
        f"- duration: {_fmt(m.get('duration_s'))} s",
        "",
    ]
    targets = [f for f in rs.figures.values() if f.name.startswith(("issue2.", "issue3."))]
    if targets:
        lines += ["## Targets (issues 2 and 3)", "", "| figure | value | target | | spread |", "|---|---|---|---|---|"]
        lines += [_target_row(f) for f in targets] + [""]
    if rs.skipped:
        lines += ["## Skipped", ""] + [f"- **{k}**: {v}" for k, v in rs.skipped.items()] + [""]
    for title, plot in (("Latency against throughput", "latency_vs_load"), ("Round trip against tensor size", "rtt"),
                        ("Batch sizes", "batches"), ("Where one request's time goes", "breakdown")):
        if plot in plots:
            lines += [f"## {title}", "", f"![{title}]({plots[plot]})", ""]
    lines += _breakdown_tables(rs)
    lines += ["## Calibration (same run)", "", "| figure | median | p99 | unit | spread | passes |",
              "|---|---|---|---|---|---|"]
    for f in rs.calibration.values():
        lines.append(f"| {f.name} | {_fmt(f.value)} | {_fmt(f.p99)} | {f.unit} | {f.spread * 100:.0f}% | "
                     f"{', '.join(_fmt(p) for p in f.passes)} |")
    lines += ["", "## All figures", "",
              "| figure | median | p99 | unit | ratio | calibration | spread (value / ratio) | passes |",
              "|---|---|---|---|---|---|---|---|"]
    for f in rs.figures.values():
        errors = f.detail.get("errors") if f.detail else None
        note = f" ({errors} errors)" if errors else ""
        lines.append(f"| {f.name}{note} | {_fmt(f.value)} | {_fmt(f.p99)} | {f.unit} | {_fmt(f.ratio)} | "
                     f"{f.calibration or '-'} | {f.spread * 100:.0f}% / {f.ratio_spread * 100:.0f}% | "
                     f"{', '.join(_fmt(p) for p in f.passes)} |")
    mem = rs.extras.get("memory_processes")
    if mem:
        lines += ["", "## Memory of the service's processes (last pass, after load)", "",
                  "PSS splits each shared page (the shared-memory arenas, numpy's libraries) between the "
                  "processes that map it; USS is what the process alone holds.", "",
                  "| pid | role | RSS MB | PSS MB | USS MB | command |", "|---|---|---|---|---|---|"]
        for r in mem:
            lines.append(f"| {r['pid']} | {r['role']} | {_fmt(r['rss_mb'])} | {_fmt(r['pss_mb'])} | "
                         f"{_fmt(r['uss_mb'])} | `{r['cmd'][:80]}` |")
    return "\n".join(lines) + "\n"


def _curve(ax: Any, rows: list[dict[str, Any]], p50: str, p99: str, label: str, point: Any) -> None:
    """p50 (solid) and p99 (dashed) latency against throughput, each point labelled by `point(row)`."""
    x = [r["rps"] for r in rows]
    line = ax.plot(x, [r[p50] for r in rows], "o-", label=f"{label} p50")[0]
    ax.plot(x, [r[p99] for r in rows], "s--", color=line.get_color(), alpha=0.7, label=f"{label} p99")
    for r in rows:
        ax.annotate(point(r), (r["rps"], r[p50]), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _breakdown_tables(rs: ResultSet) -> list[str]:
    out: list[str] = []
    curve = rs.extras.get("batching_curve", [])
    one = next((c for c in curve if c["mode"] == "batching" and c["callers"] == 1), None)
    if one and one.get("breakdown"):
        out += ["### Runner call, one caller, from trace hook timestamps (µs)", "", "| segment | p50 | p99 |",
                "|---|---|---|"]
        out += [f"| {k} | {_fmt(v['p50_us'])} | {_fmt(v['p99_us'])} |" for k, v in one["breakdown"].items()] + [""]
    traced = rs.extras.get("http_trace_breakdown_ms")
    if traced:
        out += ["### HTTP request at one connection, JSON body: p50 of timestamps recorded along the path (ms)", "",
                "From `X-Shmserve-Trace` responses: the API worker's parse/decode/encode times and the runner "
                "call's own trace, for the same request.", "", "| stage | p50 ms |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in traced.items()] + [""]
    http = rs.extras.get("http_breakdown_ms")
    if http:
        out += ["### HTTP request at one connection, JSON body: means from /metrics deltas (ms)", "",
                "| stage | mean ms |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in http.items()] + [""]
        out += ["These means come from /metrics histograms over a whole wrk run (a cross-check of the traced "
                "figures). The same decode/encode operations timed alone:", ""]
    codec = rs.extras.get("codec_costs_us")
    if codec:
        out += ["| operation | µs |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in codec.items()] + [""]
    return out


def plot_all(rs: ResultSet, folder: Path, stem: str) -> dict[str, str]:
    """Write the PNG plots next to the report; return {plot: file name}. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fname = f"{stem}_{name}.png"
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=110)
        plt.close(fig)
        made[name] = fname

    http = rs.extras.get("http_curve", [])
    batching = rs.extras.get("batching_curve", [])
    if http or batching:
        fig, axes = plt.subplots(1, 2 if batching else 1, figsize=(13 if batching else 7, 5), squeeze=False)
        ax = axes[0][0]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in http:
            groups.setdefault((row["system"], row["body"]), []).append(row)
        for (system, body), rows in sorted(groups.items()):
            rows.sort(key=lambda r: r["connections"])
            _curve(ax, rows, "p50", "p99", f"{system} {body}", lambda r: f"c{r['connections']}")
        ax.set(xscale="log", yscale="log", xlabel="throughput (req/s)", ylabel="latency (ms)",
               title="HTTP: latency vs load (wrk, closed loop; cN = connections)")
        ax.grid(True, which="both", alpha=0.3)
        if groups:
            ax.legend(fontsize=7)
        if batching:
            ax = axes[0][1]
            for mode in ("batching", "nobatch"):
                rows = sorted((r for r in batching if r["mode"] == mode), key=lambda r: r["callers"])
                if not rows:
                    continue
                _curve(ax, rows, "p50_ms", "p99_ms", mode, lambda r: f"{r['callers']}")
            ax.set(xscale="log", yscale="log", xlabel="throughput (calls/s)", ylabel="latency (ms)",
                   title="Runner calls from Python (asyncio callers; label = callers)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "latency_vs_load")

    transport = rs.extras.get("transport_curve", [])
    if transport:
        fig, ax = plt.subplots(figsize=(7, 5))
        x = [r["bytes"] for r in transport]
        ax.plot(x, [r["shm_p50_us"] for r in transport], "o-", label="shmserve run() p50")
        ax.plot(x, [r["shm_p99_us"] for r in transport], "o:", label="shmserve run() p99")
        ax.plot(x, [r["pipe_p50_us"] for r in transport], "s-", label="multiprocessing.Pipe + pickle p50")
        ax.plot(x, [r["memcpy_p50_us"] for r in transport], "^--", label="one memcpy p50")
        ping = rs.calibration.get("calib.pingpong_us")
        if ping:
            ax.axhline(ping.value, color="grey", lw=0.8, ls="--", label="semaphore ping-pong p50")
        ax.set(xscale="log", yscale="log", xlabel="tensor bytes", ylabel="round trip (µs)",
               title="Round trip vs tensor size (identity runnable)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "rtt")

    hists = [r for r in batching if r["mode"] == "batching" and r.get("histogram")]
    if hists:
        fig, axes = plt.subplots(1, len(hists), figsize=(3.2 * len(hists), 3.5), squeeze=False)
        for ax, r in zip(axes[0], hists, strict=True):
            sizes = [int(k) for k in r["histogram"]]
            counts = list(r["histogram"].values())
            ax.bar(sizes, counts, width=0.8)
            ax.set(title=f"{r['callers']} callers (mean {_fmt(r['mean_batch_size'])})", xlabel="batch size",
                   ylabel="batches")
        save(fig, "batches")

    one = next((r for r in batching if r["mode"] == "batching" and r["callers"] == 1), None)
    http_bd = rs.extras.get("http_breakdown_ms") or {}
    traced_bd = rs.extras.get("http_trace_breakdown_ms") or {}
    if (one and one.get("breakdown")) or http_bd or traced_bd:
        fig, ax = plt.subplots(figsize=(10, 3.8))
        bars: list[tuple[str, list[tuple[str, float]]]] = []
        if one and one.get("breakdown"):
            segs = [(k, max(0.0, v["p50_us"]) / 1e3) for k, v in one["breakdown"].items() if not k.startswith("total")]
            bars.append(("runner call\n(trace hook, p50)", segs))
        if traced_bd:
            segs = [(k, max(0.0, v)) for k, v in traced_bd.items() if not k.startswith("total")]
            bars.append(("HTTP request, 1 conn\n(traced, p50)", segs))
        elif http_bd:
            segs = [(k, max(0.0, v)) for k, v in http_bd.items() if not k.startswith("client-observed")]
            bars.append(("HTTP request, 1 conn\n(/metrics means)", segs))
        colors = [plt.get_cmap("tab20")(i) for i in range(20)]
        k = 0
        for i, (_label, segs) in enumerate(bars):
            left = 0.0
            for name, ms in segs:
                ax.barh(i, ms, left=left, label=f"{name}", edgecolor="white", color=colors[k % len(colors)])
                left += ms
                k += 1
        ax.set_yticks(range(len(bars)), [b[0] for b in bars])
        ax.set(xlabel="ms", title="Where one request's time goes")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        save(fig, "breakdown")
    return made


def write(rs: ResultSet, out_md: Path) -> Path:
    """Write the Markdown report (and its plots, when matplotlib is installed) to `out_md`."""
    out_md.parent.mkdir(parents=True, exist_ok=True)
    try:
        plots = plot_all(rs, out_md.parent, out_md.stem)
    except ImportError:
        rs.skip("report plots", "matplotlib is not installed: pip install matplotlib (or .[perf])")
        plots = {}
    out_md.write_text(markdown(rs, plots))
    return out_md
