"""Small statistics helpers: percentiles of samples and medians across passes."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np


def percentiles(samples: Sequence[float] | np.ndarray, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles of `samples`, keyed ``"p50"``, ``"p90"``...; empty input gives NaNs."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}": math.nan for q in qs}
    values = np.percentile(arr, list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, values, strict=True)}


def median(values: Sequence[float]) -> float:
    """Median of the finite values, NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(finite)) if finite else math.nan


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of the finite values: how much the passes disagreed."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return 0.0
    mid = statistics.median(finite)
    return float((max(finite) - min(finite)) / mid) if mid else math.inf


def histogram(values: Sequence[int]) -> dict[str, int]:
    """Counts of each integer value, keys as strings so the dict survives JSON."""
    counts: dict[str, int] = {}
    for v in values:
        counts[str(int(v))] = counts.get(str(int(v)), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
