"""Supervisor: spawn runner workers, watch them, restart the dead, clean up everything.

`shmserve.start(*runners)` returns a `RunnerGroup`. It owns, for each runner:
the registry entry, one doorbell semaphore and one Unix socket per worker,
and the worker processes. Stopping it (or leaving its `with` block, or
Ctrl-C, or interpreter exit) terminates the workers and unlinks every name
it created. Workers exit on their own when the supervisor dies, and the next
`start()` sweeps names whose creator's lease is dead (`shmserve.lease`).

The watcher thread restarts workers that exit, and is the watchdog of hung
ones (`shmserve.watchdog`): each worker slot has a health board, and a
worker whose board shows no progress for the runner's ``restart_after_s`` (a
method that never returns, or a process stopped by SIGSTOP) is killed, so its
calls fail with RunnerUnavailable and it is restarted like any dead worker.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import wait
from typing import Any

from .. import lease, registry
from ..client import RunnerClient
from ..errors import ConfigError, RunnerError
from ..process import (
    RUNNER_WORKER,
    RUNNER_WORKER_OUTLIVING,
    Child,
    CrashHistory,
    RestartPolicy,
    SignalRole,
    spawn,
    stop_children,
)
from ..runner import Runner
from ..shm import budget
from ..shm.health import HealthBoard
from ..shm.signal import Signal
from ..strategy import WorkerPlan
from ..watchdog import Health
from ..worker_stats import stats_path
from . import runner as worker_main

#: seconds every worker of a runner gets to import its Runnable and run its ``__init__`` (loading a model)
READY_TIMEOUT_S = 120.0
#: how a group started with ``outlive_sigterm=True`` stops its workers (they ignore SIGTERM)
OUTLIVE_STOP_SIGNAL = RUNNER_WORKER_OUTLIVING.stop_signal
STOP_GRACE_S = 5.0
WATCH_EVERY_S = 0.25  # how often the watcher reads the health boards
#: a worker slot restarts its worker at once, then with a growing delay once it crashed 4 times in 10 s
RESTART_POLICY = RestartPolicy(window_s=10.0, backoff_after=3)
log = logging.getLogger("shmserve.watchdog")


class WorkerHandle:
    """One worker slot: its doorbell, socket path and current process."""

    def __init__(self, sup: "RunnerSupervisor", plan: WorkerPlan) -> None:
        self.sup = sup
        self.plan = plan
        self.index = plan.index
        self.doorbell = Signal.create()
        self.socket_path = str(registry.runtime_dir() / f"{sup.runner.name}-{plan.index}.sock")
        self.child: Child | None = None
        self.restarts = 0
        self.crashes = CrashHistory(RESTART_POLICY)
        self.board = HealthBoard.create()  # the watchdog's view of this slot's worker (one per slot, kept)
        self.killed_pid = 0  # the pid the watchdog killed last, so it is not killed twice

    @property
    def process(self) -> Any:
        """The current worker process (None before the first spawn)."""
        return self.child.process if self.child is not None else None

    def spawn(self) -> None:
        r = self.sup.runner
        spec = worker_main.WorkerSpec(
            runner_name=r.name,
            index=self.index,
            runnable_class=r.runnable_class,
            init_params=r.runnable_init_params,
            methods=[(c.signature, c.max_batch_size, c.max_latency_ms) for c in r.method_configs.values()],
            socket_path=self.socket_path,
            doorbell_name=self.doorbell.name,
            threads=self.plan.threads,
            parent_pid=os.getpid(),
            gpu=self.plan.gpu,
            health_name=self.board.name,
            signals=self.sup.signals,
            restarts=self.restarts,
            slow_call_ms=r.slow_call_ms,
        )
        # The child inherits the environment at exec: its thread and GPU variables.
        child = spawn(self.sup.ctx, worker_main.main, (spec,), name=f"shmserve-{r.name}-{self.index}",
                      daemon=True, env=self.plan.env)
        self.board.reset()  # after start: a worker about to write its first beat is "starting"
        if self.child is not None:
            self.child.status.close()
        self.child = child

    def wait_ready(self, deadline: float) -> None:
        assert self.child is not None
        name = self.sup.runner.name
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerError(f"runner {name!r} worker {self.index} did not become ready in {READY_TIMEOUT_S:.0f} s")
            try:
                status = self.child.poll(min(remaining, 0.5))
            except (EOFError, OSError):
                self.process.join(1.0)
                raise RunnerError(
                    f"runner {name!r} worker {self.index} exited with code {self.process.exitcode} before it was "
                    f"ready; is {self.sup.runner.runnable_class.__qualname__} importable (defined at module level)?"
                ) from None
            if status is None:
                continue
            if status.ready:
                return
            raise RunnerError(f"runner {name!r} failed to start: its Runnable raised during __init__",
                              "InitError", status.error)

    def check_hung(self, now: float) -> None:
        """Kill this slot's worker if its health board says it is hung (the watcher then restarts it)."""
        proc = self.process
        if proc is None or proc.pid == self.killed_pid or not proc.is_alive():
            return
        limits = self.sup.runner.watchdog
        if self.board.judge(now, limits) is not Health.HUNG:
            return
        log.warning("runner %r worker %d (pid %d) made no progress for over %.0f s (a hung method or a stopped "
                    "process): killing it; its calls fail with RunnerUnavailable and it is restarted",
                    self.sup.runner.name, self.index, proc.pid, limits.restart_after_s)
        self.killed_pid = proc.pid
        proc.kill()  # SIGKILL also ends a process stopped by SIGSTOP

    def cleanup(self) -> None:
        self.board.close(unlink=True)
        self.doorbell.unlink()
        self.doorbell.close()
        if self.child is not None:
            self.child.status.close()
        for path in (self.socket_path, str(stats_path(self.sup.runner.name, self.index))):
            try:
                os.unlink(path)
            except OSError:
                pass


class RunnerSupervisor:
    """The workers of one runner."""

    def __init__(self, runner: Runner, workers: int | None, ctx: Any, signals: SignalRole = RUNNER_WORKER) -> None:
        self.runner = runner
        self.ctx = ctx
        self.signals = signals  # what the workers stop on (`shmserve.process`: the signal scheme)
        self.plans = runner.strategy.plan(runner.runnable_class, workers if workers is not None else runner.workers,
                                          gpus=runner.gpus)
        self.handles: list[WorkerHandle] = []
        self.registered = False

    def start(self) -> None:
        r = self.runner
        registry.register(r.name, self._record())
        self.registered = True
        self.handles = [WorkerHandle(self, plan) for plan in self.plans]
        registry.update(r.name, self._record())
        for h in self.handles:
            h.spawn()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for h in self.handles:
            h.wait_ready(deadline)

    def _record(self) -> dict[str, Any]:
        r = self.runner
        return {
            "name": r.name,
            "supervisor_pid": os.getpid(),
            "arena_mb": r.arena_mb,
            "max_queue_size": r.max_queue_size,
            "timeout": r.timeout,
            "watchdog": r.watchdog.to_dict(),
            "models": [m if isinstance(m, str) else f"{m.name}:{m.version}" for m in r.models],
            "workers": [{"index": h.index, "socket": h.socket_path, "health": h.board.name} for h in self.handles],
        }

    def stop(self) -> None:
        stop_children([h.child for h in self.handles if h.child is not None], self.signals.stop_signal, STOP_GRACE_S)
        for h in self.handles:
            h.cleanup()
        if self.registered:
            registry.unregister(self.runner.name)
            self.registered = False


class RunnerGroup:
    """Handle returned by `shmserve.start()`: a context manager with `.stop()`."""

    def __init__(self) -> None:
        self.supervisors: list[RunnerSupervisor] = []
        self.runners: list[Runner] = []
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stopped = False
        self._old_sigterm: Any = None  # our SIGTERM handler, while installed

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit (like Ctrl-C into KeyboardInterrupt) so `with` blocks
        and atexit clean up; only when nobody else handles SIGTERM and we are the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signo: int, _frame: Any) -> None:
            raise SystemExit(128 + signo)

        signal.signal(signal.SIGTERM, on_term)
        self._old_sigterm = on_term

    def _restore_sigterm(self) -> None:
        ours = self._old_sigterm
        self._old_sigterm = None
        if ours is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is ours:  # nobody replaced it since
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def worker_pids(self, name: str) -> list[int]:
        """Pids of the live worker processes of runner `name`."""
        for sup in self.supervisors:
            if sup.runner.name == name:
                return [h.process.pid for h in sup.handles if h.process is not None and h.process.is_alive()]
        raise KeyError(name)

    def restarts(self, name: str) -> int:
        """How many times workers of runner `name` have been restarted."""
        for sup in self.supervisors:
            if sup.runner.name == name:
                return sum(h.restarts for h in sup.handles)
        raise KeyError(name)

    def _watch(self) -> None:
        """Restart workers that die while the group runs; kill those the watchdog finds hung."""
        while not self._stopping.is_set():
            with self._lock:
                handles = [h for s in self.supervisors for h in s.handles if h.process is not None]
            sentinels = {h.process.sentinel: h for h in handles}
            ready = wait(list(sentinels) + [self._wake_r], timeout=WATCH_EVERY_S)
            if self._stopping.is_set():
                return
            now = time.monotonic()
            for handle in handles:
                handle.check_hung(now)
            for s in ready:
                h = sentinels.get(s)  # type: ignore[call-overload]
                if h is None or h.process.is_alive():
                    continue
                h.process.join(0)
                backoff = h.crashes.crashed(time.monotonic()).delay_s
                if backoff and self._stopping.wait(backoff):
                    return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        os.unlink(h.socket_path)
                    except OSError:
                        pass
                    h.restarts += 1  # before spawn: the new worker reports it
                    h.spawn()

    def stop(self) -> None:
        """Stop every worker and remove every shared-memory name this group created."""
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5.0)
        for r in self.runners:
            r.unbind()
        for sup in reversed(self.supervisors):
            sup.stop()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._restore_sigterm()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def __enter__(self) -> "RunnerGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunnerGroup {[r.name for r in self.runners]} {'stopped' if self.stopped else 'running'}>"


def start(*runners: Runner, workers: int | dict[str, int] | None = None, bind: bool = True,
          outlive_sigterm: bool = False) -> RunnerGroup:
    """Spawn worker processes for `runners` and bind them, so their methods go through shared memory.

    `workers` overrides the worker count: an int for every runner or a dict by
    runner name. With `outlive_sigterm`, the workers ignore SIGTERM (a signal to
    the whole process group or cgroup, as systemd sends on stop) and stop only
    when this group stops them (with `OUTLIVE_STOP_SIGNAL`) or this process
    dies, so that the callers in other processes can finish their calls first;
    ``shmserve serve`` uses it. Returns a handle to use as a context manager or
    to `.stop()`. Embedded runners (``Runner(..., embedded=True)``) get no
    workers: with `bind` they run in this process, and are released by `.stop()` too.
    """
    if mp.parent_process() is not None and mp.current_process().name.startswith("shmserve-"):
        raise RuntimeError(
            "shmserve.start() ran inside a runner worker while it imported your main module; "
            "put the start() call under `if __name__ == \"__main__\":`"
        )
    _check_runners(runners)
    lease.current()  # before atexit.register(group.stop): the lease (and its names' last sweep) goes after it
    registry.sweep()
    # Fail here, with the numbers, rather than in a worker that cannot map its channel.
    budget.check(budget.runners_budget(runners, clients=1 if bind else 0, workers=workers))
    ctx = mp.get_context("spawn")  # never fork: a forked CUDA or threaded parent is unsafe
    group = RunnerGroup()
    atexit.register(group.stop)
    group._install_sigterm()
    try:
        for r in runners:
            if r.embedded:
                if bind:
                    r.init_local(quiet=True)
                    group.runners.append(r)
                continue
            count = workers.get(r.name) if isinstance(workers, dict) else workers
            sup = RunnerSupervisor(r, count, ctx, RUNNER_WORKER_OUTLIVING if outlive_sigterm else RUNNER_WORKER)
            group.supervisors.append(sup)
            sup.start()
            group.runners.append(r)
        if bind:
            for r in runners:
                if not r.embedded:
                    r.bind(RunnerClient(r.name))
    except BaseException:
        group.stop()
        raise
    group._watcher = threading.Thread(target=group._watch, name="shmserve-supervisor", daemon=True)
    group._watcher.start()
    return group


def _check_runners(runners: Iterable[Runner]) -> None:
    names: set[str] = set()
    for r in runners:
        if not isinstance(r, Runner):
            raise ConfigError(f"shmserve.start() takes Runner objects, got {r!r}")
        if r.name in names:
            raise ConfigError(f"two runners are named {r.name!r}; runner names must be unique")
        names.add(r.name)
