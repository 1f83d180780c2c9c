"""The result file: figures, their calibration ratios, and the run's metadata.

A figure is one number a person can quote (a median across passes), with its
per-pass values, its unit, which direction is better, and the name of the
calibration figure it is divided by. The ratio, not the raw value, is what
`python -m perf compare` checks, so a slower or busier machine does not read
as a regression of shmserve.

Layout of a result file (JSON)::

    {"schema": 1, "mode": "quick", "meta": {...machine, versions, git, date...},
     "calibration": {name: figure}, "figures": {name: figure},
     "skipped": {what: why}, "extras": {plot data}}
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import median, spread

SCHEMA = 1


@dataclass
class Figure:
    """One measured figure: the median of its passes plus how noisy they were."""

    name: str
    value: float
    unit: str
    better: str  # "lower" or "higher"
    passes: list[float] = field(default_factory=list)
    spread: float = 0.0
    calibration: str | None = None
    ratio: float | None = None
    ratio_spread: float = 0.0
    p99: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    target_met: bool | None = None

    @classmethod
    def from_passes(cls, name: str, passes: list[float], unit: str, better: str, **kw: Any) -> "Figure":
        """Build a figure whose value is the median of `passes`."""
        if better not in ("lower", "higher"):
            raise ValueError(f"figure {name!r}: better must be 'lower' or 'higher', got {better!r}")
        return cls(name=name, value=median(passes), unit=unit, better=better, passes=list(passes),
                   spread=spread(passes), **kw)

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON-able dict (NaN becomes null)."""
        return _clean(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Figure":
        """Inverse of `to_json`."""
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("value") is None:
            kw["value"] = math.nan
        return cls(**kw)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


class ResultSet:
    """Figures of one run, and the calibration figures they are divided by."""

    def __init__(self, mode: str, meta: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.meta: dict[str, Any] = dict(meta or {})
        self.calibration: dict[str, Figure] = {}
        self.figures: dict[str, Figure] = {}
        self.skipped: dict[str, str] = {}
        self.extras: dict[str, Any] = {}

    def add_calibration(self, fig: Figure) -> Figure:
        """Record a calibration figure (its ratio is 1 by definition)."""
        fig.ratio = 1.0
        self.calibration[fig.name] = fig
        return fig

    def add(self, fig: Figure) -> Figure:
        """Record a figure; its ratio is computed from its calibration figure, if any."""
        fig.ratio, fig.ratio_spread = self.ratio_of(fig)
        self.figures[fig.name] = fig
        return fig

    def ratio_of(self, fig: Figure) -> tuple[float | None, float]:
        """(ratio, its spread across passes).

        When the figure and its calibration were measured in the same passes,
        the ratio is the median of the per-pass ratios (each pass's two numbers
        were taken side by side, so machine noise cancels within a pass) and its
        spread is theirs. Otherwise value / calibration value, with the two
        spreads added. A figure without calibration is its own ratio (it is
        already a side-by-side ratio, like a speed-up)."""
        if fig.calibration is None:
            return (fig.value if math.isfinite(fig.value) else None), fig.spread
        cal = self.calibration.get(fig.calibration)
        if cal is None or not math.isfinite(cal.value) or cal.value == 0 or not math.isfinite(fig.value):
            return None, fig.spread
        if fig.passes and len(fig.passes) == len(cal.passes):
            per_pass = [f / c for f, c in zip(fig.passes, cal.passes, strict=True)
                        if f is not None and c and math.isfinite(f) and math.isfinite(c)]
            if per_pass:
                return median(per_pass), spread(per_pass)
        return fig.value / cal.value, fig.spread + cal.spread

    def skip(self, what: str, why: str) -> None:
        """Note that a part of the suite did not run, and why."""
        self.skipped[what] = why

    def to_json(self) -> dict[str, Any]:
        """The whole run as a JSON-able dict."""
        return _clean({
            "schema": SCHEMA,
            "mode": self.mode,
            "meta": self.meta,
            "calibration": {k: v.to_json() for k, v in self.calibration.items()},
            "figures": {k: v.to_json() for k, v in self.figures.items()},
            "skipped": self.skipped,
            "extras": self.extras,
        })

    def save(self, path: Path) -> Path:
        """Write the run as JSON to `path` (folders created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ResultSet":
        """Inverse of `to_json`."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"result file has schema {data.get('schema')!r}, this perf suite reads schema {SCHEMA}")
        rs = cls(data.get("mode", "?"), data.get("meta"))
        rs.calibration = {k: Figure.from_json(v) for k, v in data.get("calibration", {}).items()}
        rs.figures = {k: Figure.from_json(v) for k, v in data.get("figures", {}).items()}
        rs.skipped = dict(data.get("skipped", {}))
        rs.extras = dict(data.get("extras", {}))
        return rs

    @classmethod
    def load(cls, path: str | Path) -> "ResultSet":
        """Read a result file written by `save`."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SystemExit(f"no result file at {path}: run `python -m perf run` first") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path} is not a perf result file (bad JSON: {exc})") from None
        return cls.from_json(data)
