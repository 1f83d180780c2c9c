"""Runner worker process: accept client channels, batch waiting calls, run the model.

One process hosts one Runnable instance. Two threads:

* the *control* thread (`control.py`) accepts client connections on a Unix
  socket, maps the client's channel segment and watches the socket for the
  client's exit;
* the *dispatch* loop (main thread, `main` here driving `dispatch.py`) waits on
  the doorbell semaphore, reads new descriptors from every channel
  (`channel.py`), asks the batching policy whether to run now, runs the method
  on a batch view and writes the results back.

Sockets carry only the attach handshake (segment and semaphore names); no
tensor and nothing from a request ever crosses them. The parent's side (spawn,
watch, restart) is `group.py`; the signals are in `shmserve.process`.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import posix_ipc

from ..process import RUNNER_WORKER, SignalFlag, SignalRole, report_error, report_ready
from ..runnable import MethodSignature, Runnable
from ..shm.health import HealthBoard
from ..shm.signal import Signal, Spinner, spin_budget_s
from ..worker_stats import WorkerStats
from .control import ControlServer
from .dispatch import POLL_S, Dispatcher
from .results import RETRY_S

__all__ = ["WorkerSpec", "main"]


@dataclass
class WorkerSpec:
    """Everything a worker process needs, sent once at spawn (control plane only)."""

    runner_name: str
    index: int
    runnable_class: type[Runnable]
    init_params: dict[str, Any]
    methods: list[tuple[MethodSignature, int, float]]  # (signature, max_batch_size, max_latency_ms)
    socket_path: str
    doorbell_name: str
    threads: int
    parent_pid: int
    gpu: str | None = None  # the GPU this worker was given (CUDA_VISIBLE_DEVICES), if any
    health_name: str | None = None  # this worker slot's watchdog board (shmserve.watchdog)
    #: the signals that stop this worker and those it ignores (see ``start(outlive_sigterm=)``)
    signals: SignalRole = RUNNER_WORKER
    restarts: int = 0  # times this worker slot was restarted before this process (for /metrics)
    slow_call_ms: float | None = None  # runners[.NAME].logging.slow_call_ms: log calls at least this long


# -- process main ----------------------------------------------------------------------
def main(spec: WorkerSpec, status: Connection) -> None:
    """Entry point of a runner worker process (spawned by `shmserve.worker.group`); it reports
    on `status` (`shmserve.process.report_ready` / `report_error`)."""
    # The handlers only record the signal; the loop below checks it at least every POLL_S.
    # Ctrl-C is the supervisor's to handle; under `shmserve serve` a SIGTERM to the whole process
    # group must not stop us while the API workers still drain their calls (`shmserve.process`).
    stop = SignalFlag(spec.signals)
    _setup_logging(spec)
    doorbell = Signal.open(spec.doorbell_name)
    try:
        spin_s = spin_budget_s()  # a bad SHMSERVE_SPIN_US fails the start, with its message
        instance = spec.runnable_class(**spec.init_params)
        _set_threads(spec.threads)
    except BaseException:
        report_error(status, traceback.format_exc())
        raise SystemExit(1) from None
    stats = WorkerStats(spec.runner_name, spec.index, [sig.name for sig, _, _ in spec.methods], spec.restarts)
    dispatcher = Dispatcher(instance, spec.methods, stats)
    if spec.slow_call_ms is not None:
        dispatcher.slow_call_s = spec.slow_call_ms / 1000.0
    methods_info = {
        sig.name: {"index": i, "batchable": sig.batchable, "input_dim": sig.input_dim, "output_dim": sig.output_dim,
                   "max_batch_size": mbs, "max_latency_ms": mlat, "stream": sig.stream}
        for i, (sig, mbs, mlat) in enumerate(spec.methods)
    }
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(spec.socket_path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o077)
    try:
        listener.bind(spec.socket_path)
    finally:
        os.umask(old_umask)
    listener.listen(128)
    control = ControlServer(listener, doorbell, methods_info, dispatcher.add_channel, gpu=bool(spec.gpu))
    control.start()
    board = dispatcher.board = HealthBoard.attach(spec.health_name) if spec.health_name else None
    if board is not None:
        board.start(os.getpid(), time.monotonic())
    report_ready(status)
    # A lone caller's next call tends to come within a few tens of µs: poll for it instead of
    # sleeping, since waking a sleeping process on another CPU is what such a call costs most.
    # Only after a wake-up that brought one call, though: when calls come in bunches the CPUs are
    # busy producing them, and polling would take CPU time from the processes that make them.
    spinner = Spinner(spin_s)
    check_parent_at = 0.0
    try:
        wake = time.monotonic() + POLL_S
        while not stop.stop:
            timeout = max(0.0, min(wake - time.monotonic(), POLL_S))
            if dispatcher.results:  # a parked result: look for the room its caller frees soon
                timeout = min(timeout, RETRY_S)
            try:
                if dispatcher.busy or dispatcher.arrived > 1:  # a batch waits for its window, or load
                    doorbell.wait(timeout)
                else:
                    spinner.wait(doorbell, timeout)
                dispatcher.arrived = 0
            except posix_ipc.SignalError:  # interrupted by a signal: re-check the flags
                pass
            if doorbell.value():
                doorbell.drain()
            dispatcher.intake()
            wake = dispatcher.step()
            now = time.monotonic()
            if board is not None:
                board.beat(now)  # the watchdog's sign of life: at least every POLL_S while idle
            if dispatcher.stats.due(now):
                dispatcher.publish_stats()
            if now > check_parent_at:
                check_parent_at = now + POLL_S
                if os.getppid() != spec.parent_pid:
                    break  # the supervisor is gone (killed): nobody would restart or clean up after us
        # Graceful stop: serve what has already arrived, then exit.
        dispatcher.intake()
        dispatcher.drain_all()
        dispatcher.results.finish()
    finally:
        control.stop()
        if board is not None:
            dispatcher.board = None
            board.close()
        dispatcher.stats.unlink()
        try:
            os.unlink(spec.socket_path)
        except OSError:
            pass
        for ch in dispatcher.channels:
            ch.flush()


def _setup_logging(spec: WorkerSpec) -> None:
    """The API workers' line format (``<time> api[0] LEVEL logger: message``) as ``runner[NAME:INDEX]``.

    Without it the worker's lines went out through Python's last-resort handler, bare messages with
    no time and no source. The level stays WARNING, the last-resort handler's, so the same lines come
    out (a method's own INFO lines stay quiet, as before); a process that already has handlers (a
    fork of a configured parent) keeps them.
    """
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s runner[{spec.runner_name}:{spec.index}] %(levelname)s %(name)s: %(message)s")


def _set_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(threads)
        except Exception:
            pass
