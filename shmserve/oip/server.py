"""`InferenceServer`: the protocol state one API worker shares between REST and gRPC.

It owns the model table, the readiness probes, the client shared-memory
regions (when allowed) and the statistics, and runs every inference the same
way for both transports: resolve the model, call it, count the outcome in the
worker's metrics under the model's name (so ``/metrics`` and the statistics
extension see v2 calls next to native ones).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runner import Runner
from ..service import Service
from ..shm.extra import OUTPUT_TO
from .errors import InferError, status_of
from .models import Model, ModelTable
from .references import output_destination
from .stats import MetricsSink, model_statistics

if TYPE_CHECKING:
    from .regions import RegionTable

__all__ = ["InferenceServer", "EXTENSIONS"]

log = logging.getLogger("shmserve.oip")

#: protocol extensions this server implements (system shared memory only when allowed)
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")


class InferenceServer:
    """Models, readiness, regions and statistics of one Service; see the module docstring.

    Args:
        service: the Service whose APIs and runner methods are the models.
        executor: thread pool for plain-function APIs and readiness probes.
        metrics: this API worker's metrics (requests are counted per model name).
        ready: the server's readiness probe, ``() -> (ready, reason)``.
        runner_ready: one runner's readiness probe (blocking).
        version: the server version shown in server metadata.
        regions: client shared-memory regions; None when ``--allow-client-shm`` is off.
    """

    def __init__(self, service: Service, executor: Executor | None, metrics: MetricsSink,
                 ready: Callable[[], tuple[bool, str]], runner_ready: Callable[[Runner], bool], version: str = "",
                 regions: "RegionTable | None" = None) -> None:
        self.service = service
        self.executor = executor
        self.metrics = metrics
        self._ready = ready
        self.version = version
        self.regions = regions
        self.models = ModelTable(service, lambda: self._ready()[0], runner_ready)

    # -- health and metadata ------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The server metadata response."""
        extensions = list(EXTENSIONS)
        if self.regions is not None:
            extensions.append("system_shared_memory")
        return {"name": "shmserve", "version": self.version, "extensions": extensions}

    async def off_loop(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking probe in the executor (probes may re-attach to restarted runner workers)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def server_ready(self) -> bool:
        """True when every runner has a live worker."""
        try:
            ok, _ = await self.off_loop(self._ready)
        except Exception:
            log.exception("readiness probe failed")
            return False
        return bool(ok)

    async def model_ready(self, model: Model) -> bool:
        """True when `model` can serve now."""
        try:
            return bool(await self.off_loop(model.ready))
        except Exception:
            log.exception("readiness probe of model %r failed", model.name)
            return False

    async def index(self) -> list[dict[str, str]]:
        """The model repository index (each model's readiness probed off the loop)."""
        states = {m.name: await self.model_ready(m) for m in self.models.models.values()}
        return self.models.index(lambda m: states[m.name])

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """The statistics extension's ``model_stats`` list: one model, or all of them."""
        models = [self.models.get(name, version)] if name else list(self.models.models.values())
        return model_statistics(models, self.metrics)

    # -- inference -------------------------------------------------------------------
    async def infer(self, model: Model, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any],
                    requested: Sequence[Any] | None = None) -> list[tuple[str, np.ndarray]]:
        """Call `model`; counts the outcome. Raises `InferError` (with its status) on any failure.

        `requested`: the request's outputs; when the one output of a runner method names a region, the
        runner worker writes the result straight into it (`output_destination`), and the caller's
        `RegionTable.write` then finds it there and copies nothing."""
        start = time.perf_counter()
        timeout = _timeout_of(parameters)
        dest = output_destination(model, requested, self.regions) if requested else None
        token = OUTPUT_TO.set(dest) if dest is not None else None
        try:
            outputs = await model.infer(inputs, parameters, timeout, self.executor)
        except asyncio.CancelledError:
            self.metrics.observe_request(model.name, 499, time.perf_counter() - start)
            raise
        except Exception as exc:
            err = status_of(exc)
            if err.status >= 500 and not isinstance(exc, InferError):
                log.warning("v2 model %r: %s", model.name, err.message)
            self.metrics.observe_request(model.name, err.status, time.perf_counter() - start)
            raise err from None
        finally:
            if token is not None:
                OUTPUT_TO.reset(token)
        self.metrics.observe_request(model.name, 200, time.perf_counter() - start)
        return outputs

    def close(self) -> None:
        """Unmap every client region (the server is stopping)."""
        if self.regions is not None:
            self.regions.close()


def _timeout_of(parameters: Mapping[str, Any]) -> float | None:
    """The request's ``timeout`` parameter (microseconds, as tritonclient sends it) in seconds."""
    raw = parameters.get("timeout")
    if raw is None:
        return None
    if not isinstance(raw, (int, float)) or isinstance(raw, bool) or raw <= 0:
        raise InferError(400, f"parameter 'timeout' must be a positive number of microseconds, got {raw!r}")
    return float(raw) / 1e6
