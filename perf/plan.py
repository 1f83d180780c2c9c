"""How much each mode measures: passes and durations of every section."""
from __future__ import annotations

from dataclasses import dataclass

from .bench_http import HttpPlan


@dataclass(frozen=True)
class Plan:
    """Passes and durations for one mode of `python -m perf run`."""

    mode: str
    transport_passes: int
    transport_budget_s: float
    pingpong_rounds: int
    sizes: tuple[str, ...]
    batching_passes: int
    batching_duration_s: float
    callers: tuple[int, ...]
    http: HttpPlan
    peers_default: tuple[str, ...]


QUICK = Plan(
    mode="quick", transport_passes=3, transport_budget_s=0.2, pingpong_rounds=3000,
    sizes=("3KB", "600KB", "16MB", "128MB"),
    batching_passes=2, batching_duration_s=1.2, callers=(1, 8, 32, 128),
    http=HttpPlan(passes=2, duration_s=2, connections=(1, 32, 128), trivial_duration_s=1),
    peers_default=(),
)

FULL = Plan(
    mode="full", transport_passes=5, transport_budget_s=0.8, pingpong_rounds=20000,
    sizes=("3KB", "600KB", "16MB", "128MB"),
    batching_passes=3, batching_duration_s=4.0, callers=(1, 8, 32, 128),
    http=HttpPlan(passes=3, duration_s=10, connections=(1, 32, 128), sweep=(4, 8, 16, 64), sweep_duration_s=5,
                  trivial_duration_s=3),
    peers_default=("bentoml", "mosec"),
)

CHECK = Plan(
    mode="check", transport_passes=0, transport_budget_s=0.0, pingpong_rounds=0, sizes=(),
    batching_passes=0, batching_duration_s=0.0, callers=(),
    http=HttpPlan(passes=0, duration_s=0),
    peers_default=(),
)

PLANS = {p.mode: p for p in (QUICK, FULL, CHECK)}
