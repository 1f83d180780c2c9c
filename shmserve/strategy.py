"""Resource strategy: how many worker processes a runner gets, and their threads.

`Strategy` follows BentoML's default strategy:

* a Runnable that supports ``nvidia.com/gpu`` on a host with GPUs gets one
  worker per visible GPU, each pinned with ``CUDA_VISIBLE_DEVICES``;
* a CPU Runnable with ``SUPPORTS_CPU_MULTI_THREADING`` gets one worker that
  may use every CPU;
* any other CPU Runnable gets one single-threaded worker per CPU.

A Runnable that supports *only* ``nvidia.com/gpu``, on a host without a visible
GPU, is served on the CPU by the rules above with a warning (as BentoML does);
``Strategy(strict=True)`` refuses it instead.

A runner takes another strategy with ``Runner(..., scheduling_strategy=MyStrategy)``
(a subclass, or an instance). Override `worker_count` and `worker_threads` to
change the decision and keep the environment handling (thread variables, GPU
pinning), or `plan` to decide everything.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .runnable import Runnable

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
GPU = "nvidia.com/gpu"


class CPUFallbackWarning(RuntimeWarning):
    """A GPU-only Runnable is served on the CPU because this host shows no GPU."""


@dataclass(frozen=True)
class WorkerPlan:
    """Environment for one worker process."""

    index: int
    threads: int
    gpu: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def cpu_count() -> int:
    """CPUs this process may run on (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """GPU ids visible to this process, without importing a CUDA library."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return []
    return [str(i) for i in range(count)]


class Strategy:
    """Decides the worker processes of a runner (BentoML's default strategy).

    Args:
        strict: refuse a Runnable whose ``SUPPORTED_RESOURCES`` this host cannot
            provide (a GPU-only Runnable without a visible GPU) instead of
            serving it on the CPU with a `CPUFallbackWarning`.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = bool(strict)

    def worker_count(self, runnable_class: type[Runnable], gpus: list[str], cpus: int) -> int:
        """How many workers, given the GPUs assigned (empty: a CPU runner) and the CPUs."""
        if gpus:
            return len(gpus)
        return 1 if runnable_class.SUPPORTS_CPU_MULTI_THREADING else cpus

    def worker_threads(self, runnable_class: type[Runnable], count: int, gpus: list[str], cpus: int) -> int:
        """CPU threads per worker (exported as OMP_NUM_THREADS and friends)."""
        if not runnable_class.SUPPORTS_CPU_MULTI_THREADING:
            return 1
        return max(1, cpus // count)  # GPU workers still get CPU threads for pre/post-processing

    def plan(
        self,
        runnable_class: type[Runnable],
        workers: int | None = None,
        gpus: Sequence[str] | None = None,
        cpus: int | None = None,
    ) -> list[WorkerPlan]:
        """The workers of `runnable_class`: `workers` overrides the count, `gpus` assigns GPU ids
        (default: every visible GPU when the Runnable supports them)."""
        ncpu = cpus if cpus is not None else cpu_count()
        resources = runnable_class.SUPPORTED_RESOURCES
        if gpus is not None and GPU not in resources:
            raise ConfigError(f"{runnable_class.__name__} does not declare {GPU!r} but GPUs {list(gpus)} were assigned")
        gpu_ids = list(gpus) if gpus is not None else (visible_gpus() if GPU in resources else [])
        if not gpu_ids and "cpu" not in resources:
            self._fall_back_to_cpu(runnable_class)
        count = workers if workers is not None else self.worker_count(runnable_class, gpu_ids, ncpu)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigError(f"{type(self).__name__}.worker_count gave {count!r} for {runnable_class.__name__}; "
                              "it must be a positive int")
        threads = self.worker_threads(runnable_class, count, gpu_ids, ncpu)
        plans = []
        for i in range(count):
            gpu = gpu_ids[i % len(gpu_ids)] if gpu_ids else None
            plans.append(WorkerPlan(i, threads, gpu, _env(threads, gpu)))
        return plans

    def _fall_back_to_cpu(self, runnable_class: type[Runnable]) -> None:
        message = (f"{runnable_class.__name__} supports only {list(runnable_class.SUPPORTED_RESOURCES)} and this "
                   "host has no visible GPU")
        if self.strict:
            raise ConfigError(f"{message}; run it on a GPU host, or drop strict=True to serve it on the CPU")
        warnings.warn(f"{message}: serving it on the CPU instead (add 'cpu' to SUPPORTED_RESOURCES to silence "
                      "this, or pass scheduling_strategy=Strategy(strict=True) to refuse)",
                      CPUFallbackWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strict={self.strict})"


#: BentoML's name for the default strategy.
DefaultStrategy = Strategy


def as_strategy(value: Any, runner: str) -> Strategy:
    """A `Strategy` instance from what ``Runner(scheduling_strategy=...)`` was given."""
    if value is None:
        return Strategy()
    if isinstance(value, type) and issubclass(value, Strategy):
        return value()
    if isinstance(value, Strategy):
        return value
    raise ConfigError(f"scheduling_strategy of runner {runner!r} must be a shmserve.strategy.Strategy subclass or "
                      f"instance, got {value!r}")


def plan_workers(
    runnable_class: type[Runnable],
    workers: int | None = None,
    gpus: Sequence[str] | None = None,
    cpus: int | None = None,
    strategy: Strategy | None = None,
) -> list[WorkerPlan]:
    """Decide the worker processes for a Runnable with `strategy` (default: `Strategy()`)."""
    return (strategy or Strategy()).plan(runnable_class, workers, gpus, cpus)


def _env(threads: int, gpu: str | None) -> dict[str, str]:
    env = {var: str(threads) for var in THREAD_ENV_VARS}
    # A CPU worker must not grab a GPU by accident; a GPU worker sees only its own.
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    return env
