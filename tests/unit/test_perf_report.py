"""Parsing, trace arithmetic and the report of the perf suite, on synthetic data."""
from __future__ import annotations

import importlib.util

import pytest

from perf import tracing, wrk
from perf.bench_http import metrics_breakdown, roles_from_log
from perf.report import markdown, write
from perf.results import Figure, ResultSet
from perf.stats import histogram, percentiles

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8111/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   158.93us  114.00us   2.50ms   91.23%
    Req/Sec   129.39k    17.16k  153.38k    70.00%
  Latency Distribution
     50%  113.00us
     75%  194.00us
     90%  261.00us
     99%    1.56ms
  257262 requests in 2.00s, 20.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec: 128477.79
Transfer/sec:     10.05MB
"""


def test_wrk_parse_reads_throughput_percentiles_and_errors() -> None:
    r = wrk.parse(WRK_OUTPUT)
    assert r.rps == pytest.approx(128477.79)
    assert r.latency_ms["p50"] == pytest.approx(0.113)
    assert r.latency_ms["p99"] == pytest.approx(1.56)
    assert r.latency_ms["mean"] == pytest.approx(0.15893)
    assert r.requests == 257262
    assert (r.non2xx, r.socket_errors, r.errors) == (7, 3, 10)


def test_wrk_parse_refuses_output_without_throughput() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def _trace(t0: float, size: int, model_start: float) -> dict[str, float]:
    return {"submit": t0, "dequeue": t0 + 10e-6, "batch_start": t0 + 12e-6, "model_start": model_start,
            "model_end": model_start + 50e-6, "written": model_start + 60e-6, "complete": model_start + 70e-6,
            "batch_size": size}


def test_batches_are_counted_once_per_model_run() -> None:
    traces = [_trace(0.0, 3, 1.0), _trace(0.0, 3, 1.0), _trace(0.0, 3, 1.0), _trace(0.0, 1, 2.0)]
    stats = tracing.batch_stats(traces)
    assert stats["batches"] == 2
    assert stats["mean_batch_size"] == pytest.approx(2.0)  # (3 + 1) / 2 batches
    assert stats["mean_batch_size_per_call"] == pytest.approx(2.5)  # (3 + 3 + 3 + 1) / 4 calls
    assert stats["histogram"] == {"1": 1, "3": 1}


def test_breakdown_segments_add_up_to_total() -> None:
    traces = [_trace(0.0, 1, 100e-6)]
    bd = tracing.breakdown(traces)
    parts = sum(v["p50_us"] for k, v in bd.items() if not k.startswith("total"))
    assert parts == pytest.approx(bd["total (submit -> complete)"]["p50_us"])
    assert bd["model"]["p50_us"] == pytest.approx(50.0)


def test_collector_records_only_while_recording_and_only_its_runner() -> None:
    c = tracing.TraceCollector("mlp")
    c("mlp", "predict", {"submit": 1.0})
    c.recording = True
    c("mlp", "predict", {"submit": 2.0})
    c("other", "predict", {"submit": 3.0})
    assert [t["submit"] for t in c.take()] == [2.0]
    assert c.take() == []


def test_metrics_breakdown_from_histogram_deltas() -> None:
    http = 'shmserve_http_request_duration_seconds{"api": "predict", "status": "200"}'
    call = 'shmserve_runner_call_seconds{"method": "predict", "runner": "mlp"}'
    wait = 'shmserve_runner_queue_wait_seconds{"method": "predict", "runner": "mlp"}'
    comp = 'shmserve_runner_compute_seconds{"method": "predict", "runner": "mlp"}'
    before = {http: (1.0, 100.0), call: (0.5, 100.0), wait: (0.1, 100.0), comp: (0.2, 100.0)}
    # 1000 more requests: means of 0.4, 0.3, 0.1 and 0.15 ms
    after = {http: (1.4, 1100.0), call: (0.8, 1100.0), wait: (0.2, 1100.0), comp: (0.35, 1100.0)}
    bd = metrics_breakdown(before, after, wrk_mean_ms=0.5)
    assert bd["API worker: decode + encode + dispatch (server - runner call)"] == pytest.approx(0.1)
    assert bd["runner: model"] == pytest.approx(0.15)
    assert bd["runner: result write + wake-up + read (call - wait - model)"] == pytest.approx(0.05)
    assert bd["socket + HTTP parse + wrk (client - server)"] == pytest.approx(0.1)


def test_roles_from_serve_log(tmp_path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("x INFO shmserve.serve: runner 'mlp' workers: pids [11, 12]\n"
                   "x INFO shmserve.serve: API worker 0: pid 13\n")
    assert roles_from_log(log) == {11: "runner_worker", 12: "runner_worker", 13: "api_worker"}
    assert roles_from_log(tmp_path / "absent.log") == {}


def test_stats_helpers() -> None:
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0
    assert histogram([2, 1, 2]) == {"1": 1, "2": 2}


def _synthetic() -> ResultSet:
    rs = ResultSet("quick", {"date": "d", "git": {"commit": "0123456789abcdef"}, "machine": {"cpus": 2}})
    rs.add_calibration(Figure.from_passes("calib.pingpong_us", [12.0, 13.0], "us", "lower"))
    fig = rs.add(Figure.from_passes("issue2.rtt_3KB_over_pingpong", [2.5, 2.7], "x", "lower", target="<= 3x"))
    fig.target_met = True
    rs.skip("peers.bentoml", "not installed")
    rs.extras["transport_curve"] = [
        {"size": s, "bytes": b, "shm_p50_us": b / 1e4 + 20, "shm_p99_us": b / 5e3 + 40, "pipe_p50_us": b / 1e3 + 60,
         "memcpy_p50_us": b / 1e4} for s, b in (("3KB", 3136), ("600KB", 602112), ("16MB", 16777216))]
    rs.extras["batching_curve"] = [
        {"mode": "batching", "callers": n, "rps": 1000.0 * n ** 0.5, "p50_ms": 0.1 * n, "p99_ms": 0.3 * n,
         "mean_batch_size": float(n), "histogram": {str(n): 10},
         "breakdown": {"model": {"p50_us": 40.0, "p99_us": 60.0, "n": 10}}} for n in (1, 8, 32)]
    rs.extras["http_curve"] = [{"system": "shmserve", "body": "json", "connections": c, "rps": 100.0 * c,
                                "p50": 0.1 * c, "p75": 0.2 * c, "p90": 0.3 * c, "p99": 0.5 * c} for c in (1, 32)]
    rs.extras["http_breakdown_ms"] = {"client-observed mean (wrk)": 0.5, "runner: model": 0.05}
    return rs


def test_markdown_lists_targets_skips_and_calibration() -> None:
    text = markdown(_synthetic(), {})
    assert "issue2.rtt_3KB_over_pingpong" in text and "| met |" in text
    assert "peers.bentoml" in text and "not installed" in text
    assert "calib.pingpong_us" in text


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_report_writes_markdown_and_plots(tmp_path) -> None:
    md = write(_synthetic(), tmp_path / "r.md")
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["r_batches.png", "r_breakdown.png", "r_latency_vs_load.png", "r_rtt.png"]
    assert all(name in md.read_text() for name in pngs)
