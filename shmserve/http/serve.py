"""The ``shmserve serve`` supervisor: runner workers, N API worker processes, restarts, shutdown.

1. Import the service (``module:svc``, the working directory first on ``sys.path``).
2. Bind one listening socket; every API worker inherits it, so a restarted
   worker takes over without losing queued connections.
3. Start the runners with ``shmserve.start(*svc.runners)`` (skipped with
   ``local_runners``, where each API worker runs the Runnables itself).
4. Spawn the API workers (spawn start method) and wait for each to report ready.
5. Watch: an API worker that exits on its own is restarted (at most
   `MAX_RESTARTS` in `RESTART_WINDOW_S`, then the server gives up and stops).
6. On SIGTERM/SIGINT (to the supervisor, or to the whole process group as
   systemd and Ctrl-C send it): the supervisor closes its copy of the listening
   socket and sends SIGTERM to the API workers, which close theirs at once (so
   new connections are refused), answer every request already received, and
   exit. Only then do the runners stop, which removes their shared memory: their
   workers ignore SIGTERM and SIGINT (see ``shmserve.start(outlive_sigterm=True)``),
   so the calls of a draining API worker still reach them. The signal of every
   process role is in `shmserve.process`.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

from .. import registry
from ..config.serve import ServeConfig
from ..process import API_WORKER, SERVE, Child, CrashHistory, RestartPolicy, SignalFlag, spawn, stop_children
from ..shm import budget
from .api_worker import APIWorkerSpec, run_api_worker
from .server import bind_tcp

__all__ = ["serve", "MAX_RESTARTS", "RESTART_WINDOW_S", "RESTART_POLICY"]

log = logging.getLogger("shmserve.serve")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 30.0
#: API workers restart at once; past `MAX_RESTARTS` crashes (of all of them) in `RESTART_WINDOW_S` the server stops
RESTART_POLICY = RestartPolicy(window_s=RESTART_WINDOW_S, give_up_after=MAX_RESTARTS)
#: seconds an API worker gets, after the graceful shutdown timeout, before it is killed
STOP_MARGIN_S = 5.0


class _APIWorker(Child):
    """One API worker process, the supervisor's end of its status pipe, and its spec."""

    def __init__(self, ctx: Any, spec: APIWorkerSpec, sock: socket.socket) -> None:
        child = spawn(ctx, run_api_worker, (spec, sock), name=f"shmserve-api-{spec.index}", daemon=False)
        super().__init__(child.process, child.status)
        self.spec = spec


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    sock = bind_tcp(host, port, socket.SO_REUSEADDR, "cannot listen on", "pick another --port or stop what uses it")
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _on_signal(sig: signal.Signals) -> None:
    log.info("got %s: shutting down", sig.name)


def serve(options: ServeConfig) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    from ..service import load_service

    cwd = options.cwd
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    svc = load_service(options.service)  # fail here, clearly, before any process starts
    options.config.apply(svc.runners)  # before the runners start: batching, workers, arenas, queues
    from .app import check_settings

    check_settings(options.config.settings)  # an unreadable API keys file, tracing without its extra
    api = options.config.settings.api_server
    if svc.runners and not options.local_runners:  # every API worker maps a channel to every runner worker
        budget.check(budget.runners_budget(svc.runners, clients=api.workers))
    signals = SignalFlag(SERVE, wakeup=True, on_signal=_on_signal)
    sock = _listen(api.http.host, api.http.port, api.http.backlog)
    port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    metrics_dir = str(registry.metrics_dir())  # swept with the lease if this process is killed
    grpc_sock = _reserve_grpc(api)
    grpc_port = grpc_sock.getsockname()[1] if grpc_sock is not None else None
    regions_dir = None
    if api.allow_client_shm:  # inside the metrics folder: swept with it if this process is killed
        regions_dir = os.path.join(metrics_dir, "regions")
        os.mkdir(regions_dir, 0o700)
    base = APIWorkerSpec(serve=options, metrics_dir=metrics_dir, grpc_port=grpc_port, regions_dir=regions_dir)
    workers: list[_APIWorker] = []
    handle: Any = None
    code = 0
    try:
        if svc.runners and not options.local_runners:
            from ..worker.group import start

            # The supervisor makes no calls itself: the API workers attach on their own.
            handle = start(*svc.runners, bind=False, outlive_sigterm=True)
        if signals.stop:
            return 0
        workers = [_APIWorker(ctx, replace(base, index=i), sock) for i in range(api.workers)]
        if not _wait_ready(workers, signals, api.startup_timeout):
            return 0 if signals.stop else 1
        if handle is not None:
            for r in svc.runners:
                log.info("runner %r workers: pids %s", r.name, handle.worker_pids(r.name))
        for w in workers:
            log.info("API worker %d: pid %s", w.spec.index, w.process.pid)
        mode = "in-process (--local-runners)" if options.local_runners else "shared memory"
        grpc = f" and grpc://{api.http.host}:{grpc_port}" if grpc_port is not None else ""
        print(f"shmserve: serving {svc.name!r} on http://{api.http.host}:{port}{grpc} "
              f"({api.workers} API workers, runners: {mode})", flush=True)
        code = _supervise(ctx, workers, sock, signals)
    finally:
        sock.close()  # first: the API workers close theirs on SIGTERM, then connections are refused
        if grpc_sock is not None:
            grpc_sock.close()
        _stop_workers(workers, api.graceful_shutdown_timeout + STOP_MARGIN_S)
        if handle is not None:
            handle.stop()
        _sweep_dead()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        signals.restore()
        log.info("stopped")
    return code


def _reserve_grpc(api: Any) -> socket.socket | None:
    """Hold the gRPC port (``api_server.grpc``) for the API workers, which all bind it with SO_REUSEPORT."""
    if api.grpc.port is None or not api.grpc.enabled:
        return None
    from .grpc.server import reserve_port

    return reserve_port(api.http.host, api.grpc.port)


def _wait_ready(workers: list[_APIWorker], signals: SignalFlag, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not all(w.ready for w in workers):
        if signals.stop:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            log.error("API workers not ready after %.0f s; raise api_server.startup_timeout (--startup-timeout) if the service is slow to import", timeout)
            return False
        pending = [w for w in workers if not w.ready]
        wait([w.status for w in pending] + [w.process.sentinel for w in pending] + [signals.read_end], min(left, 1.0))
        signals.drain()
        for w in pending:
            status = w.poll_quietly()
            if status is not None and not status.ready:
                log.error("API worker %d failed to start: %s", w.spec.index, status.error)
                return False
            if not w.ready and not w.process.is_alive():
                log.error("API worker %d exited with code %s while starting", w.spec.index, w.process.exitcode)
                return False
    return True


def _supervise(ctx: Any, workers: list[_APIWorker], sock: socket.socket, signals: SignalFlag) -> int:
    crashes = CrashHistory(RESTART_POLICY)
    while not signals.stop:
        wait([w.process.sentinel for w in workers] + [w.status for w in workers if not w.ready] + [signals.read_end], 1.0)
        signals.drain()
        if signals.stop:
            break
        for i, w in enumerate(workers):
            if not w.ready:
                status = w.poll_quietly()
                if status is not None and not status.ready:
                    log.error("restarted API worker %d failed to start: %s", w.spec.index, status.error)
            if w.process.is_alive():
                continue
            log.warning("API worker %d (pid %s) exited with code %s; restarting it",
                        w.spec.index, w.process.pid, w.process.exitcode)
            decision = crashes.crashed(time.monotonic())
            if not decision.restart:
                log.error("API workers crashed %d times in %.0f s; giving up", decision.crashes, RESTART_WINDOW_S)
                return 1
            w.close()
            _sweep_dead()  # the dead worker's client channels and semaphores
            workers[i] = _APIWorker(ctx, w.spec, sock)
            log.info("API worker %d: pid %s", w.spec.index, workers[i].process.pid)
    return 0


def _sweep_dead() -> None:
    """Remove shared memory left by processes that died without cleaning up (a killed API worker)."""
    try:
        registry.sweep()  # it warns with the counts when it removed anything
    except Exception:  # cleanup must never mask the real outcome
        log.exception("sweeping shared memory of dead processes failed")


def _stop_workers(workers: list[_APIWorker], timeout: float) -> None:
    def killing(w: Child) -> None:
        assert isinstance(w, _APIWorker)
        log.warning("API worker %d did not stop within %.0f s; killing it", w.spec.index, timeout)

    stop_children(workers, API_WORKER.stop_signal, timeout, on_kill=killing)
    for w in workers:
        w.close()
