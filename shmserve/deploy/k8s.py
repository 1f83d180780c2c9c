"""``shmserve k8s render``: plain Kubernetes manifests for one Service, emitted with PyYAML.

Files (one object each, plus ``kustomization.yaml`` listing them)::

    configmap.yaml   the effective shmserve.yaml, mounted at /etc/shmserve
    deployment.yaml  one container running `shmserve serve`; /dev/shm is an emptyDir with
                     medium Memory sized from the budget (tmpfs pages count against the
                     container's memory, so the limit includes them); the runtime directory
                     is an emptyDir too; non-root; probes on /readyz and /livez; preStop pause
    service.yaml     ClusterIP on the HTTP port, with Prometheus scrape annotations
    hpa.yaml         autoscaling/v2 on shmserve_http_in_flight_requests per pod, CPU as fallback
    pdb.yaml         at most one pod down at a time during voluntary disruptions
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .bundle import APP_DIR, APP_UID, RUNTIME_DIR
from .plan import DeploymentPlan, memory_limit_mib

__all__ = ["K8sOptions", "render", "write_manifests", "IN_FLIGHT_METRIC", "PRESTOP_PAUSE_S"]

IN_FLIGHT_METRIC = "shmserve_http_in_flight_requests"
#: seconds the pod keeps serving after it is marked terminating, so endpoints and load
#: balancers stop sending to it before the server stops accepting
PRESTOP_PAUSE_S = 5
CONFIG_MOUNT = "/etc/shmserve"


@dataclass(frozen=True)
class K8sOptions:
    """What the configuration file does not say: image, replicas, autoscaling targets."""

    image: str = ""
    namespace: str | None = None
    min_replicas: int = 1
    max_replicas: int = 10
    #: average in-flight HTTP requests per pod the autoscaler aims at
    target_in_flight: int = 32
    #: CPU utilisation (of the request) the autoscaler falls back on
    target_cpu_percent: int = 80
    #: MiB each Python process of the pod is allowed besides /dev/shm (see `memory_limit_mib`)
    memory_per_process_mib: int = 256

    def check(self) -> None:
        """Fail on impossible replica counts or targets."""
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"replicas: need 1 <= --min-replicas ({self.min_replicas}) <= --max-replicas "
                              f"({self.max_replicas})")
        if self.target_in_flight < 1 or not 1 <= self.target_cpu_percent <= 100 or self.memory_per_process_mib < 1:
            raise ConfigError("--target-in-flight and --memory-per-process must be positive, --target-cpu 1..100")


def _meta(p: DeploymentPlan, opts: K8sOptions, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or p.name, "labels": _labels(p)}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def _labels(p: DeploymentPlan) -> dict[str, str]:
    return {"app.kubernetes.io/name": p.name, "app.kubernetes.io/component": "shmserve"}


def _selector(p: DeploymentPlan) -> dict[str, str]:
    return {"app.kubernetes.io/name": p.name}


def _scrape(p: DeploymentPlan) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(p.port), "prometheus.io/path": "/metrics"}


def _ports(p: DeploymentPlan, key: str) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = [{"name": "http", key: p.port, "protocol": "TCP"}]
    if p.grpc_port:
        ports.append({"name": "grpc", key: p.grpc_port, "protocol": "TCP"})
    return ports


def _cpu(value: float) -> str:
    return f"{int(math.ceil(value * 1000))}m"


def config_map(p: DeploymentPlan, opts: K8sOptions) -> dict[str, Any]:
    """The effective shmserve.yaml as a ConfigMap."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(p, opts, f"{p.name}-config"),
            "data": {"shmserve.yaml": p.config.to_yaml(p.service.runners)}}


def deployment(p: DeploymentPlan, opts: K8sOptions, config_text: str) -> dict[str, Any]:
    """The Deployment: one `shmserve serve` container and its volumes."""
    api = p.api
    spec = p.service_spec if ":" in p.service_spec else p.service_spec + ":svc"
    memory = memory_limit_mib(p, opts.memory_per_process_mib)
    limits: dict[str, Any] = {"memory": f"{memory}Mi"}
    if p.gpus:
        limits["nvidia.com/gpu"] = p.gpus
    probe = {"httpGet": {"path": "/readyz", "port": "http"}}
    # The startup probe covers importing the service, starting runner workers and loading models.
    startup_failures = int(math.ceil((api.startup_timeout + 30.0) / 2.0))
    container = {
        "name": "shmserve",
        "image": opts.image or f"{p.name}:latest",
        "imagePullPolicy": "IfNotPresent",
        "command": ["shmserve", "serve", spec, "--config", f"{CONFIG_MOUNT}/shmserve.yaml",
                    "--host", "0.0.0.0", "--port", str(p.port)],
        "workingDir": f"{APP_DIR}/src",
        "ports": _ports(p, "containerPort"),
        "env": [{"name": "SHMSERVE_RUNTIME_DIR", "value": RUNTIME_DIR},
                {"name": "SHMSERVE_HOME", "value": APP_DIR},
                # The root file system is read-only: libraries that cache (torch, onnxruntime) write to /tmp.
                {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"}],
        "resources": {"requests": {"cpu": _cpu(p.cpus), "memory": f"{memory}Mi"}, "limits": limits},
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": startup_failures},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_PAUSE_S)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "runtime", "mountPath": str(Path(RUNTIME_DIR).parent)},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        ],
    }
    # SIGTERM comes after preStop; then in-flight requests get graceful_shutdown_timeout, and
    # the runners a few seconds to stop and remove their shared memory.
    grace = int(math.ceil(PRESTOP_PAUSE_S + api.graceful_shutdown_timeout + 15))
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(p, opts),
        "spec": {
            "replicas": opts.min_replicas,
            "selector": {"matchLabels": _selector(p)},
            "template": {
                "metadata": {"labels": _labels(p),
                             "annotations": {**_scrape(p), "shmserve.io/config-sha256": digest,
                                             "shmserve.io/shm-bytes": str(p.shm_bytes)}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID,
                                        "fsGroup": APP_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{p.shm_mib}Mi"}},
                        # The runtime directory itself (mode 0700) is created inside this volume by shmserve.
                        {"name": "runtime", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        {"name": "config", "configMap": {"name": f"{p.name}-config"}},
                    ],
                },
            },
        },
    }


def service(p: DeploymentPlan, opts: K8sOptions) -> dict[str, Any]:
    """A ClusterIP Service on the HTTP port."""
    meta = _meta(p, opts)
    meta["annotations"] = _scrape(p)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "ClusterIP", "selector": _selector(p),
                     "ports": [{**port, "targetPort": port["name"]} for port in _ports(p, "port")]}}


def autoscaler(p: DeploymentPlan, opts: K8sOptions) -> dict[str, Any]:
    """HPA: in-flight requests per pod (a custom metric, e.g. from prometheus-adapter), and CPU.

    The HPA takes the largest replica count any metric asks for. While the in-flight metric
    cannot be read (no adapter serving it), CPU still scales the Deployment up, but the HPA
    does not scale down: it skips any scale-down that a missing metric might contradict.
    """
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(p, opts),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": p.name},
            "minReplicas": opts.min_replicas,
            "maxReplicas": opts.max_replicas,
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": IN_FLIGHT_METRIC},
                                          "target": {"type": "AverageValue",
                                                     "averageValue": str(opts.target_in_flight)}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": opts.target_cpu_percent}}},
            ],
        },
    }


def disruption_budget(p: DeploymentPlan, opts: K8sOptions) -> dict[str, Any]:
    """At most one pod unavailable at a time during drains and upgrades."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(p, opts),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(p)}}}


def render(p: DeploymentPlan, opts: K8sOptions | None = None) -> dict[str, dict[str, Any]]:
    """``{file name: object}`` of every manifest, kustomization.yaml last."""
    opts = opts or K8sOptions()
    opts.check()
    cm = config_map(p, opts)
    objects = {
        "configmap.yaml": cm,
        "deployment.yaml": deployment(p, opts, cm["data"]["shmserve.yaml"]),
        "service.yaml": service(p, opts),
        "hpa.yaml": autoscaler(p, opts),
        "pdb.yaml": disruption_budget(p, opts),
    }
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                     "resources": list(objects)}
    if opts.namespace:
        kustomization["namespace"] = opts.namespace
    objects["kustomization.yaml"] = kustomization
    return objects


class _Dumper(yaml.SafeDumper):
    """Block YAML as kubectl and yamllint expect it: sequences indented under their key, and a
    repeated object written out again instead of as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Multi-line text (the ConfigMap's shmserve.yaml) as a literal block, readable in kubectl get -o yaml.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _text)


def dump(obj: dict[str, Any]) -> str:
    """YAML a linter accepts: a document start, block style, keys in the order given."""
    return "---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def write_manifests(p: DeploymentPlan, out: str | Path, opts: K8sOptions | None = None) -> list[Path]:
    """Render and write every manifest into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in render(p, opts).items():
        path = out / name
        path.write_text(dump(obj))
        paths.append(path)
    return paths
