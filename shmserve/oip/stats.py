"""The statistics extension, read from the metrics the API workers already keep.

Per model (summed over every API worker of the server, as ``/metrics`` is):

- ``success`` / ``fail``: responses of the model's name, from the request
  histograms. An API model shares its name with the native ``POST /<api>``
  route, so its counts include native calls too.
- ``queue`` and ``compute_infer`` (runner-method models): the runner's queue
  wait (request written to model start) and model time of each call, from the
  runner histograms; these include every call of that method from this server.
- ``execution_count``: runner calls counted there. shmserve joins calls from
  every client into batches, so one model execution may serve several calls;
  the batch-size histogram on ``/metrics`` shows how many.

Durations are nanoseconds, as the protocol has them; ``last_inference`` is not
tracked and is 0.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .models import Model

__all__ = ["model_statistics", "MetricsSink"]


class _Histogram(Protocol):
    count: int
    sum: float


class MetricsSink(Protocol):
    """What the v2 layer needs of an API worker's metrics (`shmserve.http.metrics.Metrics`)."""

    def observe_request(self, api: str, status: int, seconds: float) -> None: ...

    def totals(self) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, str], list[Any]], int]: ...

_NONE = {"count": 0, "ns": 0}


def _duration(hists: Iterable[_Histogram]) -> dict[str, int]:
    count, total = 0, 0.0
    for h in hists:
        count += h.count
        total += h.sum
    return {"count": count, "ns": int(total * 1e9)}


def model_statistics(models: Iterable["Model"], metrics: MetricsSink) -> list[dict[str, Any]]:
    """One ``model_stats`` entry per model (REST form; gRPC converts it)."""
    requests, runner_hists, _ = metrics.totals()
    out = []
    for model in models:
        success = _duration(h for (name, status), h in requests.items() if name == model.name and status == 200)
        fail = _duration(h for (name, status), h in requests.items()
                         if name == model.name and status not in (200, 499))
        runner = getattr(model, "runner", None)
        queue, compute = dict(_NONE), dict(_NONE)
        executions = success["count"]
        if runner is not None:
            hs = runner_hists.get((runner.name, model.method_name))  # type: ignore[attr-defined]
            if hs is not None:
                _batch, wait, comp, _call = hs
                queue, compute = _duration([wait]), _duration([comp])
                executions = comp.count
        out.append({
            "name": model.name,
            "version": model.version,
            "last_inference": 0,
            "inference_count": success["count"],
            "execution_count": executions,
            "inference_stats": {
                "success": success, "fail": fail, "queue": queue,
                "compute_input": dict(_NONE), "compute_infer": compute, "compute_output": dict(_NONE),
                "cache_hit": dict(_NONE), "cache_miss": dict(_NONE),
            },
            "batch_stats": [],
        })
    return out
