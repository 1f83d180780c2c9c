"""The API worker process: import the service, bind its runners, serve HTTP on an inherited socket.

Started by the ``shmserve serve`` supervisor (`shmserve.http.serve`) with the
spawn start method. Each API worker binds every runner of the service to the
running runner workers with ``shmserve.client.attach``; with ``local_runners``
(the ``--local-runners`` debug option) it instead runs each Runnable inside
itself with ``runner.init_local()``, so no shared memory is involved at all.

It reports ready, or the error that stopped its start, on its status pipe
(`shmserve.process.report_ready` / `report_error`), and
exits when it gets SIGTERM/SIGINT or when the supervisor's end of the pipe
closes (the supervisor died). Stopping closes the listening socket first (new
connections are refused), then answers every request already received,
including pipelined ones and those still in socket buffers (see
`shmserve.http.server.HttpServer.shutdown`).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import sys
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..collector import freeze_startup
from ..config import ApiServerSettings
from ..config.serve import ServeConfig
from ..errors import ConfigError
from ..process import API_WORKER, report_error, report_ready
from ..traces import add_trace_hook

__all__ = ["APIWorkerSpec", "bind_runners", "unbind_runners", "run_api_worker"]

log = logging.getLogger("shmserve.api")


@dataclass(frozen=True)
class APIWorkerSpec:
    """Everything an API worker process needs; picklable, so it crosses the spawn boundary."""

    #: what ``shmserve serve`` serves and how: the service, ``config.settings.api_server`` for this
    #: process, and the runner settings (a runner's call timeout applies on the calling side)
    serve: ServeConfig
    index: int = 0
    #: folder where API workers share metric snapshots (None: each reports only itself)
    metrics_dir: str | None = None
    #: the gRPC port the supervisor reserved for every API worker (None: no gRPC)
    grpc_port: int | None = None
    #: folder where API workers share client shared-memory registrations (None: the extension is off)
    regions_dir: str | None = None


def bind_runners(runners: Iterable[Any], local: bool, timeout: float) -> None:
    """Bind each runner: to the running runner workers (waiting up to `timeout` seconds to
    connect to each), or in-process when `local` or embedded."""
    runners = list(runners)
    for runner in runners:
        if local or runner.embedded:
            runner.init_local(quiet=True)
    runners = [r for r in runners if not (local or r.embedded)]
    if not runners:
        return
    try:
        from ..client import attach
    except ImportError as exc:
        raise ConfigError(
            "this build of shmserve has no shared-memory client (shmserve.client); "
            "run `shmserve serve` with --local-runners to debug with in-process runners"
        ) from exc
    for runner in runners:
        attach(runner, timeout=timeout)


def unbind_runners(runners: Iterable[Any]) -> None:
    """Release every runner binding of this process."""
    for runner in runners:
        try:
            runner.unbind()
        except Exception:  # closing one binding must not keep the others open
            log.exception("closing runner %r failed", getattr(runner, "name", runner))


def run_api_worker(spec: APIWorkerSpec, sock: socket.socket, status: Connection) -> None:
    """Process main of one API worker (the spawn target)."""
    opts = spec.serve
    api = opts.config.settings.api_server
    logging.basicConfig(level=api.logging.level, format=f"%(asctime)s api[{spec.index}] %(levelname)s %(name)s: %(message)s")
    # Signals are handled by the event loop (`_serve`); until it runs, a SIGINT from the terminal
    # must not leave a half-started worker behind a traceback (`shmserve.process`: the signal scheme).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.cwd not in sys.path:
        sys.path.insert(0, opts.cwd)
    import uvloop

    from .. import __version__
    from ..service import load_service
    from .app import App
    from .server import HttpServer

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    executor = ThreadPoolExecutor(max_workers=api.threads, thread_name_prefix="shmserve-api")
    try:
        svc = load_service(opts.service)
        opts.config.apply(svc.runners)
        bind_runners(svc.runners, opts.local_runners, api.startup_timeout)
        regions = None
        if spec.regions_dir is not None:
            from ..oip.regions import RegionTable

            regions = RegionTable(spec.regions_dir)
        # Settings that cannot work (a missing API keys file, tracing without its extra) fail the start here.
        app = App(svc, executor=executor, version=__version__, metrics_dir=spec.metrics_dir, regions=regions,
                  settings=api, tracing=opts.config.settings.tracing)
    except BaseException as exc:
        executor.shutdown(wait=False)
        loop.close()
        report_error(status, f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc
    add_trace_hook(app.metrics.on_trace)  # runner batch size, queue wait and compute histograms
    server = HttpServer(app, _fit_connections(api))
    grpc_server = None
    if spec.grpc_port is not None:
        from .grpc.server import GrpcServer

        grpc_server = GrpcServer(app.inference, api.http.host, spec.grpc_port, api.http.max_body_bytes)
    try:
        try:
            loop.run_until_complete(app.startup())  # @svc.on_startup hooks, before the first request
        except BaseException as exc:
            report_error(status, f"an on_startup hook raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            raise SystemExit(1) from exc
        # What start-up built (the service, its imports, the hooks' models) lives as long as the process:
        # out of the collector's generations, a full collection no longer walks it (`shmserve.collector`).
        freeze_startup()
        loop.run_until_complete(_serve(server, sock, status, grpc_server, api.graceful_shutdown_timeout))
        loop.run_until_complete(app.shutdown())
    finally:
        app.inference.close()  # unmaps client shared-memory regions
        executor.shutdown(wait=False, cancel_futures=True)
        app.close()  # the access log's last lines, the last spans
        unbind_runners(svc.runners)
        loop.close()
        status.close()


# File descriptors kept free for everything but client connections (runner sockets, pipes, logs).
_FD_RESERVE = 64


def _fit_connections(api: ApiServerSettings) -> ApiServerSettings:
    """Raise the file-descriptor limit to what ``http.max_connections`` needs, or lower the cap to fit it.

    A connection past the limit would fail in accept() with EMFILE, which
    refuses nobody early and keeps the backlog full: the cap must be reached first.
    """
    http = api.http
    want = http.max_connections + _FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fit = max(1, soft - _FD_RESERVE)
        log.warning("the file-descriptor limit (%d) leaves room for %d connections, not "
                    "api_server.http.max_connections=%d; raise `ulimit -n` to serve more", soft, fit, http.max_connections)
        return api.model_copy(update={"http": http.model_copy(update={"max_connections": fit})})
    return api


async def _serve(server: Any, sock: socket.socket, status: Connection, grpc_server: Any, grace: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in API_WORKER.stop:  # the handler only records the signal; the stop is below
        loop.add_signal_handler(sig, stop.set)
    # EOF on the status pipe means the supervisor is gone: exit instead of serving orphaned.
    loop.add_reader(status.fileno(), stop.set)
    await server.start(sock)
    if grpc_server is not None:
        try:
            await grpc_server.start()
        except Exception as exc:
            report_error(status, f"{type(exc).__name__}: {exc}")
            await server.shutdown()
            return
    report_ready(status)
    await stop.wait()
    loop.remove_reader(status.fileno())
    log.debug("shutting down: %d connections open", len(server.state.connections))
    if grpc_server is None:
        await server.shutdown()
    else:  # both fronts drain their in-flight requests at once
        await asyncio.gather(server.shutdown(), grpc_server.stop(grace))
