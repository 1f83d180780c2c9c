"""The API worker's own GET endpoints: ``/livez``, ``/readyz``, ``/metrics``, ``/docs.json``, and readiness.

``/docs`` and its assets are served by `shmserve.http.docs_ui.DocsUI`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..service import Service
from .metrics import Metrics
from .protocol import HttpProtocol
from .request import Request

__all__ = ["ServerEndpoints", "runner_ready", "CT_JSON", "CT_TEXT", "RETRY_AFTER"]

log = logging.getLogger("shmserve.http")

CT_JSON = b"application/json"
CT_TEXT = b"text/plain; charset=utf-8"
_CT_PROM = b"text/plain; version=0.0.4; charset=utf-8"
RETRY_AFTER = b"retry-after: 1\r\n"


def runner_ready(runner: Any) -> bool:
    """True when `runner` is bound and its backend reports a live worker.

    The shared-memory backend's ``ready()`` re-attaches to restarted workers
    first (otherwise only the next call would notice them), so the probe may
    block briefly: call it off the event loop. A backend without ``ready()``
    (the in-process ``init_local`` one) counts as ready once bound.
    """
    ready = getattr(runner, "ready", None)
    if callable(ready):
        return bool(ready())  # a Runner asks its backend (`Runner.ready`)
    backend = getattr(runner, "_backend", None)  # a runner-like object without ready()
    if backend is None:
        return False
    probe = getattr(backend, "ready", None)
    return bool(probe()) if callable(probe) else True


class ServerEndpoints:
    """The server endpoints of one API worker.

    Args:
        service: whose runners `/readyz` asks about (unless `ready` is given).
        executor: where the readiness probe runs (it may block briefly).
        metrics: rendered by ``/metrics``.
        openapi: the ``/docs.json`` body.
        ready: readiness probe; defaults to every runner being `runner_ready`.
    """

    def __init__(self, service: Service, executor: Executor | None, metrics: Metrics, openapi: bytes,
                 ready: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.service = service
        self.executor = executor
        self.metrics = metrics
        self.openapi = openapi
        self.ready = ready or self.runners_ready

    def livez(self, request: Request, conn: HttpProtocol) -> None:
        """``/livez``: the process answers."""
        conn.reply(200, CT_TEXT, b"ok\n")

    def readyz(self, request: Request, conn: HttpProtocol) -> None:
        """``/readyz``: 200 when every runner has a live worker, else 503 with what is missing."""
        conn.task = asyncio.get_running_loop().create_task(self._readyz(conn))

    async def _readyz(self, conn: HttpProtocol) -> None:
        # Probing may re-attach to restarted runner workers (socket connects): not on the loop.
        try:
            ok, detail = await asyncio.get_running_loop().run_in_executor(self.executor, self.ready)
        except Exception as exc:
            log.exception("readiness probe failed")
            ok, detail = False, f"readiness probe failed: {exc}"
        if ok:
            conn.reply(200, CT_TEXT, b"ready\n")
        else:
            conn.reply_error(503, "NotReady", detail, RETRY_AFTER)

    def metrics_page(self, request: Request, conn: HttpProtocol) -> None:
        """``/metrics``: Prometheus text of every API worker of this server."""
        conn.reply(200, _CT_PROM, self.metrics.render())

    def docs(self, request: Request, conn: HttpProtocol) -> None:
        """``/docs.json``: the OpenAPI document."""
        conn.reply(200, CT_JSON, self.openapi)

    def runners_ready(self) -> tuple[bool, str]:
        """(True, "") when every runner of the service has a live worker; else False and which do not."""
        missing = [r.name for r in self.service.runners if not runner_ready(r)]
        if missing:
            return False, f"runners without a live worker: {', '.join(missing)}"
        return True, ""
