"""The perf suite's result files and regression compare, on synthetic figures (no benchmarks run)."""
from __future__ import annotations

import json
import math

import pytest

from perf.compare import Tolerances, compare, judge, main
from perf.results import Figure, ResultSet


def _run(rtt_us: float, pingpong_us: float, rps: float, trivial_rps: float) -> ResultSet:
    rs = ResultSet("quick", {"date": "2026-01-01T00:00:00+00:00", "git": {"commit": "abc"}})
    rs.add_calibration(Figure.from_passes("calib.pingpong_us", [pingpong_us], "us", "lower"))
    rs.add_calibration(Figure.from_passes("calib.http_trivial_c32_rps", [trivial_rps], "req/s", "higher"))
    rs.add(Figure.from_passes("transport.rtt_3KB_us", [rtt_us], "us", "lower", calibration="calib.pingpong_us"))
    rs.add(Figure.from_passes("http.json.c32_rps", [rps], "req/s", "higher", calibration="calib.http_trivial_c32_rps"))
    return rs


def test_figure_is_median_of_passes_with_spread() -> None:
    fig = Figure.from_passes("x", [10.0, 30.0, 20.0], "us", "lower")
    assert fig.value == 20.0
    assert fig.spread == pytest.approx((30 - 10) / 20)


def test_figure_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match="better"):
        Figure.from_passes("x", [1.0], "us", "sideways")


def test_ratio_divides_by_calibration_of_same_run() -> None:
    rs = _run(rtt_us=36.0, pingpong_us=12.0, rps=9000.0, trivial_rps=90000.0)
    assert rs.figures["transport.rtt_3KB_us"].ratio == pytest.approx(3.0)
    assert rs.figures["http.json.c32_rps"].ratio == pytest.approx(0.1)


def test_missing_calibration_leaves_ratio_empty() -> None:
    rs = ResultSet("quick")
    fig = rs.add(Figure.from_passes("a", [5.0], "us", "lower", calibration="calib.absent"))
    assert fig.ratio is None


def test_json_round_trip_keeps_figures_and_turns_nan_into_null(tmp_path) -> None:
    rs = _run(36.0, 12.0, 9000.0, 90000.0)
    rs.add(Figure.from_passes("batching.c1_mean_batch_size", [math.nan], "items", "higher"))
    rs.skip("peers.mosec", "not installed")
    path = rs.save(tmp_path / "r.json")
    raw = json.loads(path.read_text())
    assert raw["figures"]["batching.c1_mean_batch_size"]["value"] is None
    back = ResultSet.load(path)
    assert back.figures["transport.rtt_3KB_us"].ratio == pytest.approx(3.0)
    assert math.isnan(back.figures["batching.c1_mean_batch_size"].value)
    assert back.skipped == {"peers.mosec": "not installed"}


def test_load_rejects_other_schema(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": 99}))
    with pytest.raises(ValueError, match="schema"):
        ResultSet.load(path)


def test_slower_machine_with_same_ratio_is_not_a_regression() -> None:
    base = _run(36.0, 12.0, 9000.0, 90000.0)
    cur = _run(72.0, 24.0, 4500.0, 45000.0)  # everything twice as slow, shmserve included
    rows = compare(base, cur, Tolerances())
    assert {r.status for r in rows} == {"ok"}


@pytest.mark.parametrize(
    ("rtt", "rps", "want_rtt", "want_rps"),
    [
        (36.0 * 1.20, 9000.0, "REGRESSED", "ok"),  # latency ratio up 20% > 15%
        (36.0 * 1.10, 9000.0 * 0.90, "ok", "ok"),  # within tolerance both ways
        (36.0, 9000.0 * 0.80, "ok", "REGRESSED"),  # throughput ratio down 20%
        (36.0 * 0.50, 9000.0 * 1.50, "improved", "improved"),
    ],
)
def test_regression_direction_follows_better(rtt: float, rps: float, want_rtt: str, want_rps: str) -> None:
    base = _run(36.0, 12.0, 9000.0, 90000.0)
    cur = _run(rtt, 12.0, rps, 90000.0)
    status = {r.name: r.status for r in compare(base, cur, Tolerances())}
    assert status["transport.rtt_3KB_us"] == want_rtt
    assert status["http.json.c32_rps"] == want_rps


def test_per_figure_override_and_null_tolerance() -> None:
    base = _run(36.0, 12.0, 9000.0, 90000.0)
    cur = _run(36.0 * 1.3, 12.0, 9000.0 * 0.5, 90000.0)
    tol = Tolerances(0.15, (("transport.*", 0.5), ("http.*", None)))
    status = {r.name: r.status for r in compare(base, cur, tol)}
    assert status == {"transport.rtt_3KB_us": "ok", "http.json.c32_rps": "unchecked"}


def test_new_and_missing_figures_are_reported_not_failed() -> None:
    fig = Figure.from_passes("a", [1.0], "us", "lower")
    assert judge(None, fig, 0.15).status == "new"
    assert judge(fig, None, 0.15).status == "missing"


def test_compare_main_exit_code_and_tolerance_file(tmp_path, capsys) -> None:
    base = _run(36.0, 12.0, 9000.0, 90000.0).save(tmp_path / "base.json")
    worse = _run(36.0 * 1.5, 12.0, 9000.0, 90000.0).save(tmp_path / "worse.json")
    same = _run(37.0, 12.0, 9100.0, 90000.0).save(tmp_path / "same.json")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"default": 0.15}))
    loose = tmp_path / "tol.json"
    loose.write_text(json.dumps({"default": 0.15, "figures": {"transport.*": 0.6}}))
    assert main(str(base), str(same), str(plain)) == 0
    assert main(str(base), str(worse), str(plain)) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert main(str(base), str(worse), str(loose)) == 0


def test_bad_tolerance_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "tol.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        Tolerances.load(bad)


def test_tolerance_widens_to_measured_spread_unless_strict() -> None:
    base = ResultSet("quick")
    cur = ResultSet("quick")
    base.add(Figure.from_passes("http.json.c32_p99_ms", [10.0, 10.0, 10.0], "ms", "lower"))
    cur.add(Figure.from_passes("http.json.c32_p99_ms", [8.0, 13.0, 20.0], "ms", "lower"))  # +30%, spread 92%
    noisy = compare(base, cur, Tolerances())[0]
    assert noisy.status == "ok" and noisy.widened and noisy.tolerance == pytest.approx(12 / 13)
    strict = compare(base, cur, Tolerances(), noise_aware=False)[0]
    assert strict.status == "REGRESSED" and not strict.widened


def test_ratio_is_median_of_per_pass_ratios_when_measured_side_by_side() -> None:
    rs = ResultSet("quick")
    # the machine slowed down in pass 2: figure and calibration both doubled
    rs.add_calibration(Figure.from_passes("calib.pingpong_us", [10.0, 20.0, 10.0], "us", "lower"))
    fig = rs.add(Figure.from_passes("t", [30.0, 60.0, 31.0], "us", "lower", calibration="calib.pingpong_us"))
    assert fig.spread > 0.9
    assert fig.ratio == pytest.approx(3.0)
    assert fig.ratio_spread == pytest.approx(0.1 / 3.0)


def test_ratio_falls_back_to_medians_when_passes_differ() -> None:
    rs = ResultSet("quick")
    rs.add_calibration(Figure.from_passes("calib.rss", [20.0, 20.0], "MB", "lower"))
    fig = rs.add(Figure.from_passes("m", [40.0, 40.0, 40.0], "MB", "lower", calibration="calib.rss"))
    assert fig.ratio == pytest.approx(2.0)
    assert fig.ratio_spread == 0.0
