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
   so the calls of a draining API worker still reach them.
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
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from typing import Any

from .. import registry
from ..config import Config
from ..shm import budget
from .api_worker import APIWorkerSpec, run_api_worker
from .server import bind_tcp

__all__ = ["ServeOptions", "serve", "MAX_RESTARTS", "RESTART_WINDOW_S"]

log = logging.getLogger("shmserve.serve")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 30.0


@dataclass(frozen=True)
class ServeOptions:
    """What ``shmserve serve`` runs: the service, its configuration (`shmserve.config`), and the
    ``--local-runners`` debugging switch."""

    service: str
    config: Config = field(default_factory=Config)
    local_runners: bool = False


class _APIWorker:
    """One API worker process and the supervisor's end of its status pipe."""

    def __init__(self, ctx: Any, spec: APIWorkerSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.status, child_end = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=run_api_worker, args=(spec, sock, child_end),
                                   name=f"shmserve-api-{spec.index}", daemon=False)
        self.process.start()
        child_end.close()
        self.ready = False
        self.started = time.monotonic()

    def poll_status(self) -> tuple[str, Any] | None:
        """Read one status message if any; None when there is none or the pipe closed."""
        try:
            if self.status.poll():
                msg: tuple[str, Any] = self.status.recv()
                if msg[0] == "ready":
                    self.ready = True
                return msg
        except (EOFError, OSError):
            pass
        return None

    def terminate(self) -> None:
        """Ask for a graceful stop."""
        if self.process.is_alive() and self.process.pid is not None:
            try:
                os.kill(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Release the pipe and process handles (after the process exited)."""
        self.status.close()
        self.process.close()


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    sock = bind_tcp(host, port, socket.SO_REUSEADDR, "cannot listen on", "pick another --port or stop what uses it")
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class _Signals:
    """SIGTERM/SIGINT set `stop` and wake the supervisor's wait() through a socketpair."""

    def __init__(self) -> None:
        self.stop = False
        self.read_end, self._write_end = socket.socketpair()
        self.read_end.setblocking(False)
        self._write_end.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._write_end.fileno())
        self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.stop:
            log.info("got %s: shutting down", signal.Signals(signum).name)
        self.stop = True

    def drain(self) -> None:
        """Empty the wake-up socket."""
        try:
            while self.read_end.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        self.read_end.close()
        self._write_end.close()


def serve(options: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    from ..service import load_service

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    svc = load_service(options.service)  # fail here, clearly, before any process starts
    options.config.apply(svc.runners)  # before the runners start: batching, workers, arenas, queues
    from .app import check_settings

    check_settings(options.config.settings)  # an unreadable API keys file, tracing without its extra
    api = options.config.settings.api_server
    if svc.runners and not options.local_runners:  # every API worker maps a channel to every runner worker
        budget.check(budget.runners_budget(svc.runners, clients=api.workers))
    signals = _Signals()
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
    base = APIWorkerSpec(service=options.service, cwd=cwd, local_runners=options.local_runners,
                         config=options.config, metrics_dir=metrics_dir, grpc_port=grpc_port, regions_dir=regions_dir)
    workers: list[_APIWorker] = []
    handle: Any = None
    code = 0
    try:
        if svc.runners and not options.local_runners:
            import shmserve

            # The supervisor makes no calls itself: the API workers attach on their own.
            handle = shmserve.start(*svc.runners, bind=False, outlive_sigterm=True)
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
        _stop_workers(workers, api.graceful_shutdown_timeout + 5.0)
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


def _wait_ready(workers: list[_APIWorker], signals: _Signals, timeout: float) -> bool:
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
            msg = w.poll_status()
            if msg is not None and msg[0] == "error":
                log.error("API worker %d failed to start: %s", w.spec.index, msg[1])
                return False
            if not w.ready and not w.process.is_alive():
                log.error("API worker %d exited with code %s while starting", w.spec.index, w.process.exitcode)
                return False
    return True


def _supervise(ctx: Any, workers: list[_APIWorker], sock: socket.socket, signals: _Signals) -> int:
    restarts: list[float] = []
    while not signals.stop:
        wait([w.process.sentinel for w in workers] + [w.status for w in workers if not w.ready] + [signals.read_end], 1.0)
        signals.drain()
        if signals.stop:
            break
        for i, w in enumerate(workers):
            if not w.ready:
                msg = w.poll_status()
                if msg is not None and msg[0] == "error":
                    log.error("restarted API worker %d failed to start: %s", w.spec.index, msg[1])
            if w.process.is_alive():
                continue
            log.warning("API worker %d (pid %s) exited with code %s; restarting it",
                        w.spec.index, w.process.pid, w.process.exitcode)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts) > MAX_RESTARTS:
                log.error("API workers crashed %d times in %.0f s; giving up", len(restarts), RESTART_WINDOW_S)
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
    for w in workers:
        w.terminate()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            log.warning("API worker %d did not stop within %.0f s; killing it", w.spec.index, timeout)
            w.process.kill()
            w.process.join(5.0)
        w.close()
