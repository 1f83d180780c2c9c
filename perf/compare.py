"""`python -m perf compare BASE CUR`: each figure's change, judged on its calibration ratio.

A figure regresses when its ratio (value / calibration measured in the same
run) moved the wrong way by more than its tolerance: 15% unless the
tolerance file (perf/tolerances.json) says otherwise. Patterns there are
fnmatch globs over figure names; the first matching pattern wins; a
tolerance of null means "report, never fail". Unless `--strict`, a
tolerance widens to the spread of the figure's ratio across passes in either
run ((max - min) / median): on a shared machine, a change inside the noise
the run itself measured is not called a regression.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import Figure, ResultSet

DEFAULT_TOLERANCE = 0.15
TOLERANCES_FILE = Path(__file__).resolve().parent / "tolerances.json"


@dataclass
class Tolerances:
    """Default tolerance plus per-figure overrides (glob -> fraction, or None to never fail)."""

    default: float = DEFAULT_TOLERANCE
    overrides: tuple[tuple[str, float | None], ...] = ()

    def for_figure(self, name: str) -> float | None:
        """The tolerance that applies to `name`."""
        for pattern, tol in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                return tol
        return self.default

    @classmethod
    def load(cls, path: str | Path | None) -> "Tolerances":
        """Read a tolerance file: ``{"default": 0.15, "figures": {"glob": 0.25 | null}}``."""
        if path is None:
            return cls()
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SystemExit(f"tolerance file {path} not found") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"tolerance file {path} is not valid JSON: {exc}") from None
        default = float(data.get("default", DEFAULT_TOLERANCE))
        figures = data.get("figures", {})
        if not isinstance(figures, dict):
            raise SystemExit(f"{path}: 'figures' must map name globs to tolerances")
        return cls(default, tuple((str(k), None if v is None else float(v)) for k, v in figures.items()))


@dataclass
class Row:
    """One figure's comparison."""

    name: str
    unit: str
    base: float | None
    cur: float | None
    base_ratio: float | None
    cur_ratio: float | None
    change: float | None  # relative change of the ratio, + means larger
    tolerance: float | None
    status: str  # ok, REGRESSED, improved, new, missing, unchecked
    widened: bool = False  # the tolerance was widened to the measured spread


def judge(base: Figure | None, cur: Figure | None, tol: float | None, noise_aware: bool = True) -> Row:
    """Compare one figure of the baseline with the same figure of the current run.

    With `noise_aware`, the tolerance widens to the figure's own spread across
    passes (in either run): a change smaller than the noise the run itself
    measured is not called a regression."""
    ref = cur or base
    assert ref is not None
    row = Row(ref.name, ref.unit, base.value if base else None, cur.value if cur else None,
              base.ratio if base else None, cur.ratio if cur else None, None, tol, "ok")
    if base is None:
        row.status = "new"
        return row
    if cur is None:
        row.status = "missing"
        return row
    if not _finite(base.ratio) or not _finite(cur.ratio) or base.ratio == 0:
        row.status = "unchecked"
        return row
    assert base.ratio is not None and cur.ratio is not None
    if tol is not None and noise_aware:
        noise = max(base.ratio_spread or 0.0, cur.ratio_spread or 0.0)
        if noise > tol:
            row.tolerance = tol = noise
            row.widened = True
    row.change = cur.ratio / base.ratio - 1.0
    worse = row.change if ref.better == "lower" else -row.change
    if tol is None:
        row.status = "unchecked"
    elif worse > tol:
        row.status = "REGRESSED"
    elif -worse > tol:
        row.status = "improved"
    return row


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def compare(base: ResultSet, cur: ResultSet, tolerances: Tolerances, noise_aware: bool = True) -> list[Row]:
    """Rows for every figure in either run, in the current run's order."""
    names = list(cur.figures) + [n for n in base.figures if n not in cur.figures]
    return [judge(base.figures.get(n), cur.figures.get(n), tolerances.for_figure(n), noise_aware) for n in names]


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"


def format_rows(rows: list[Row]) -> str:
    """A fixed-width table of the comparison."""
    header = f"{'figure':44} {'unit':8} {'base':>10} {'current':>10} {'ratio chg':>9} {'tol':>5}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        change = "-" if r.change is None else f"{r.change * 100:+.1f}%"
        tol = "-" if r.tolerance is None else f"{'~' if r.widened else ''}{r.tolerance * 100:.0f}%"
        lines.append(f"{r.name:44} {r.unit:8} {_num(r.base):>10} {_num(r.cur):>10} {change:>9} {tol:>5}  {r.status}")
    return "\n".join(lines)


def main(base_path: str, cur_path: str, tolerance_path: str | None, strict: bool = False) -> int:
    """Print the comparison; return 1 when any figure regressed past its tolerance."""
    base = ResultSet.load(base_path)
    cur = ResultSet.load(cur_path)
    path = tolerance_path if tolerance_path is not None else (TOLERANCES_FILE if TOLERANCES_FILE.exists() else None)
    tolerances = Tolerances.load(path)
    rows = compare(base, cur, tolerances, noise_aware=not strict)
    print(f"baseline: {base_path} ({base.meta.get('date', '?')}, {base.meta.get('git', {}).get('commit', '?')[:10]})")
    print(f"current:  {cur_path} ({cur.meta.get('date', '?')}, {cur.meta.get('git', {}).get('commit', '?')[:10]})")
    if base.mode != cur.mode:
        print(f"note: comparing a {base.mode!r} run with a {cur.mode!r} run: shorter runs are noisier")
    print("judged on ratio = figure / its calibration measured in the same run; "
          + ("tolerances as given (--strict)\n" if strict else "~ = tolerance widened to the figure's own spread across passes\n"))
    print(format_rows(rows))
    bad = [r for r in rows if r.status == "REGRESSED"]
    missing = [r for r in rows if r.status == "missing"]
    print(f"\n{len(bad)} regressed, {sum(r.status == 'improved' for r in rows)} improved, "
          f"{len(missing)} missing from the current run, {len(rows)} figures")
    for name, why in cur.skipped.items():
        print(f"skipped in current run: {name}: {why}")
    return 1 if bad else 0
