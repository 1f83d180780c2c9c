"""Deploying a Service: an image bundle (``shmserve build``) and Kubernetes manifests
(``shmserve k8s render``), both rendered from one `DeploymentPlan` (the effective
configuration, the runner workers and the ``/dev/shm`` budget)."""
from __future__ import annotations

from .plan import DeploymentPlan, plan

__all__ = ["DeploymentPlan", "plan"]
