"""shmserve's performance suite: benchmarks, calibration, regression compare and report.

Run from the repository root::

    python -m perf run [--quick | --check]     # measure, write perf/results/<stamp>.json
    python -m perf compare BASE.json CUR.json  # exit 1 when a figure regressed
    python -m perf report RESULT.json          # Markdown + PNG plots

Every figure is stored with the calibration figure it is divided by, measured
in the same run, so results from noisy or different machines stay comparable.
"""
