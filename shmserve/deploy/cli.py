"""``shmserve build`` and ``shmserve k8s render``."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["register"]

log = logging.getLogger("shmserve.deploy")


def _add_target(p: argparse.ArgumentParser, output_help: str) -> None:
    from ..config.flags import add_config_argument

    p.add_argument("service", help="the Service, as module:attribute (imported from the current directory)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help=output_help)
    add_config_argument(p, "-f", "--config")


def register(subparsers: Any) -> None:
    """Add ``build`` and the ``k8s`` group."""
    b = subparsers.add_parser(
        "build", help="write an image bundle (service code, models, requirements, config, Dockerfile)",
        description="Write DIR with the service code, the stored models it uses, requirements.txt, the effective "
                    "shmserve.yaml and a Dockerfile. No image is built: run `docker build DIR`.")
    _add_target(b, "folder to write (must be new or empty)")
    b.add_argument("-r", "--requirements", metavar="FILE", help="extra pip requirements of the service code")
    b.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="another file or folder (relative to here) the service needs; repeatable")
    b.set_defaults(func=run_build)

    k = subparsers.add_parser("k8s", help="Kubernetes manifests", description="Kubernetes manifests for a Service.")
    ksub = k.add_subparsers(dest="k8s_command", metavar="COMMAND")
    ksub.required = True
    r = ksub.add_parser(
        "render", help="write Deployment, Service, HPA, PDB, ConfigMap and kustomization.yaml",
        description="Write plain manifests for SERVICE into DIR, sized from its configuration and /dev/shm budget. "
                    "Apply with `kubectl apply -k DIR`.")
    _add_target(r, "folder to write the manifests into")
    r.add_argument("--image", default="", help="container image (default: <service name>:latest)")
    r.add_argument("--namespace", default=None, help="namespace of every object (default: none, kubectl's)")
    r.add_argument("--min-replicas", type=int, default=1)
    r.add_argument("--max-replicas", type=int, default=10)
    r.add_argument("--target-in-flight", type=int, default=32,
                   help="average in-flight HTTP requests per pod the autoscaler aims at (default 32)")
    r.add_argument("--target-cpu", type=int, default=80, help="CPU utilisation %% the autoscaler falls back on")
    r.add_argument("--memory-per-process", type=int, default=256, metavar="MIB",
                   help="memory each Python process may use besides /dev/shm, for the memory limit (default 256)")
    r.set_defaults(func=run_render)


def _plan(args: argparse.Namespace) -> Any:
    from . import plan

    p = plan(args.service, args.config_file)
    for r in p.runners:
        if r.host_dependent:
            log.warning("runner %r: %d workers because this machine has that many CPUs/GPUs; set "
                        "runners.%s.resources (cpu or nvidia.com/gpu) so the target's count and /dev/shm "
                        "size are fixed", r.name, r.workers, r.name)
    return p


def run_build(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve build``."""
    from ..errors import ShmserveError
    from .bundle import build_bundle

    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
    try:
        p = _plan(args)
        out = build_bundle(p, args.output, args.requirements, args.include)
    except ShmserveError as exc:
        print(f"shmserve build: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"shmserve: bundle of {p.service.name!r} in {out} (needs {p.shm_mib} MiB of /dev/shm)\n"
          f"  docker build -t {p.name} {out}\n"
          f"  docker run --rm --shm-size={p.shm_mib}m -p {p.port}:{p.port} {p.name}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    """Entry point of ``shmserve k8s render``."""
    from ..errors import ShmserveError
    from .k8s import K8sOptions, write_manifests

    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
    opts = K8sOptions(image=args.image, namespace=args.namespace, min_replicas=args.min_replicas,
                      max_replicas=args.max_replicas, target_in_flight=args.target_in_flight,
                      target_cpu_percent=args.target_cpu, memory_per_process_mib=args.memory_per_process)
    try:
        p = _plan(args)
        paths = write_manifests(p, args.output, opts)
    except ShmserveError as exc:
        print(f"shmserve k8s render: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"shmserve: {len(paths)} manifests for {p.service.name!r} in {args.output} "
          f"(/dev/shm {p.shm_mib} MiB); apply with: kubectl apply -k {args.output}")
    return 0
