"""Resource strategy: how many worker processes a runner gets, and their threads.

Follows BentoML's default strategy:

* a Runnable that supports ``nvidia.com/gpu`` on a host with GPUs gets one
  worker per visible GPU, each pinned with ``CUDA_VISIBLE_DEVICES``;
* a CPU Runnable with ``SUPPORTS_CPU_MULTI_THREADING`` gets one worker that
  may use every CPU;
* any other CPU Runnable gets one single-threaded worker per CPU.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import ConfigError
from .runnable import Runnable

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


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


def plan_workers(
    runnable_class: type[Runnable],
    workers: int | None = None,
    gpus: Sequence[str] | None = None,
    cpus: int | None = None,
) -> list[WorkerPlan]:
    """Decide the worker processes for a Runnable.

    `workers` overrides the count; `gpus` assigns GPU ids explicitly (default:
    every visible GPU when the Runnable supports them).
    """
    ncpu = cpus if cpus is not None else cpu_count()
    resources = runnable_class.SUPPORTED_RESOURCES
    gpu_ids = list(gpus) if gpus is not None else (visible_gpus() if "nvidia.com/gpu" in resources else [])
    if gpus is not None and "nvidia.com/gpu" not in resources:
        raise ConfigError(f"{runnable_class.__name__} does not declare 'nvidia.com/gpu' but GPUs {list(gpus)} were assigned")
    if gpu_ids:
        count = workers if workers is not None else len(gpu_ids)
        # GPU workers still get CPU threads for pre/post-processing.
        threads = max(1, ncpu // count) if runnable_class.SUPPORTS_CPU_MULTI_THREADING else 1
        return [
            WorkerPlan(i, threads, gpu_ids[i % len(gpu_ids)], _env(threads, gpu_ids[i % len(gpu_ids)]))
            for i in range(count)
        ]
    if "cpu" not in resources:
        raise ConfigError(
            f"{runnable_class.__name__} supports only {list(resources)} and this host has no visible GPU"
        )
    if runnable_class.SUPPORTS_CPU_MULTI_THREADING:
        count = workers if workers is not None else 1
        threads = max(1, ncpu // count)
    else:
        count = workers if workers is not None else ncpu
        threads = 1
    return [WorkerPlan(i, threads, None, _env(threads, None)) for i in range(count)]


def _env(threads: int, gpu: str | None) -> dict[str, str]:
    env = {var: str(threads) for var in THREAD_ENV_VARS}
    # A CPU worker must not grab a GPU by accident; a GPU worker sees only its own.
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    return env
