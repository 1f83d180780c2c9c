"""What a deployment of one Service needs: its effective configuration, runner workers, /dev/shm.

`plan()` imports the service, loads its configuration (file, environment), applies it
to the runners exactly as ``shmserve serve`` does, and asks `shmserve.shm.budget`
for the ``/dev/shm`` bytes. The bundle (`shmserve.deploy.bundle`) and the
Kubernetes manifests (`shmserve.deploy.k8s`) are both rendered from a plan.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..config import Config, RunnerSettings
from ..config.resolve import cpu_value

__all__ = ["RunnerPlan", "DeploymentPlan", "plan", "CONTAINER_PORT"]

#: the port the container listens on (api_server.http.port is kept; this is its usual value)
CONTAINER_PORT = 3000


@dataclass(frozen=True)
class RunnerPlan:
    """One runner as deployed: its resolved settings and worker count."""

    name: str
    settings: RunnerSettings
    workers: int
    gpus: int
    #: True when the worker count follows this machine's CPUs or GPUs (no resources in the config)
    host_dependent: bool


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything the bundle and the manifests are rendered from."""

    service_spec: str
    service: Any
    config: Config
    runners: tuple[RunnerPlan, ...]
    shm_bytes: int
    shm_mib: int
    shm_formula: str

    @property
    def name(self) -> str:
        """The service name as a DNS-1123 label (Kubernetes object names, image names)."""
        return dns_label(self.service.name)

    @property
    def api(self) -> Any:
        """The ``api_server`` settings."""
        return self.config.settings.api_server

    @property
    def port(self) -> int:
        """The port the server listens on inside the container (0 in the config means 3000)."""
        return self.api.http.port or CONTAINER_PORT

    @property
    def grpc_port(self) -> int | None:
        """The gRPC port when the configuration serves gRPC on a fixed port."""
        grpc = self.api.grpc
        return grpc.port if grpc.enabled and grpc.port else None

    @property
    def cpus(self) -> float:
        """CPUs the pod should request: every runner's ``resources.cpu`` plus one for the API workers."""
        total = sum(cpu_value(r.settings.resources.cpu) for r in self.runners if r.settings.resources.cpu is not None)
        return total + max(1.0, self.api.workers * 0.5)

    @property
    def gpus(self) -> int:
        """GPUs the pod needs (``nvidia.com/gpu`` of every runner)."""
        return sum(r.gpus for r in self.runners)

    def models(self) -> list[Any]:
        """The stored models of the service and its runners (tags resolved), each once."""
        from ..models import get

        seen: dict[str, Any] = {}
        for owner in [self.service, *self.service.runners]:
            for m in getattr(owner, "models", ()):
                model = get(m) if isinstance(m, str) else m
                seen.setdefault(str(model.tag), model)
        return list(seen.values())


def dns_label(name: str) -> str:
    """`name` lower-cased with anything outside ``[a-z0-9-]`` turned into ``-`` (63 characters at most)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "shmserve"


def plan(service_spec: str, config_file: str | None = None) -> DeploymentPlan:
    """Import `service_spec` (working directory first on sys.path), resolve its configuration and budget."""
    from ..config.cli import load_for_service, shm_budget
    from ..shm import budget

    svc, config = load_for_service(service_spec, config_file)
    b = shm_budget(svc, config)
    runners = []
    for r in svc.runners:
        if getattr(r, "embedded", False):
            continue
        settings = config.runner(r).settings
        shm = budget.RunnerShm.of(r)
        gpu = settings.resources.nvidia_gpu
        gpus = len(gpu) if isinstance(gpu, list) else int(gpu or 0)
        fixed = r.workers is not None
        runners.append(RunnerPlan(r.name, settings, shm.workers, gpus, host_dependent=not fixed))
    return DeploymentPlan(service_spec, svc, config, tuple(runners), b.total_bytes, b.total_mib, b.describe())


def memory_limit_mib(p: DeploymentPlan, process_mib: int = 256) -> int:
    """A memory limit that holds the /dev/shm tmpfs (it counts against the pod's memory) plus
    `process_mib` for each Python process (API workers, runner workers, the supervisor)."""
    processes = 1 + p.api.workers + sum(r.workers for r in p.runners)
    return int(math.ceil((p.shm_mib + processes * process_mib) / 64.0) * 64)
