"""The child processes of shmserve: one way to spawn them, one status pipe, one restart policy,
one stop sequence and one signal scheme.

Two supervisors use it: `shmserve.worker.group` (the runner workers of ``shmserve.start()``)
and `shmserve.http.serve` (the API workers of ``shmserve serve``). Both spawn with the *spawn*
start method (never fork: a forked CUDA or threaded parent is unsafe), read the same status
messages, restart by a `RestartPolicy` and stop with `stop_children`.

Signal scheme
-------------
Each process role declares its signals once (a `SignalRole`); its parent stops it with the
role's `stop_signal`. Handlers only record the signal (`SignalFlag`, or the event loop's
handler in an API worker); the process's own loop then stops.

==============================  ================  ===============  =====================================
process                         stops on          ignores          why
==============================  ================  ===============  =====================================
``shmserve serve`` supervisor   SIGTERM, SIGINT   --               systemd, ``docker stop`` and Ctrl-C
                                                                   reach it; it stops its children in
                                                                   order
API worker                      SIGTERM, SIGINT   SIGINT while it  the supervisor sends SIGTERM; a Ctrl-C
                                                  starts           to the process group drains it too;
                                                                   before its loop runs, a Ctrl-C must
                                                                   not leave a traceback behind
runner worker                   SIGTERM           SIGINT           ``shmserve.start()``'s group sends
(``shmserve.start()``)                                             SIGTERM; Ctrl-C is its parent's to
                                                                   handle
runner worker                   SIGUSR1           SIGINT, SIGTERM  a SIGTERM to the whole process group
(``shmserve serve``)                                               (systemd, ``kill -- -PGID``) must not
                                                                   stop it while the API workers still
                                                                   drain their calls: the supervisor
                                                                   stops it with SIGUSR1 after them
==============================  ================  ===============  =====================================

Besides signals: a hung runner worker gets SIGKILL from the watchdog (`shmserve.watchdog`),
which also ends a process stopped by SIGSTOP; a child whose parent died stops by itself (a
runner worker sees its parent pid change, an API worker sees its status pipe close). A process
that calls ``shmserve.start()`` and handles no SIGTERM itself gets SIGTERM turned into
``SystemExit`` so that its ``with`` blocks and ``atexit`` clean up (`shmserve.worker.group`).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

__all__ = [
    "SignalRole", "SERVE", "API_WORKER", "RUNNER_WORKER", "RUNNER_WORKER_OUTLIVING", "SignalFlag",
    "Status", "report_ready", "report_error", "Child", "spawn",
    "RestartPolicy", "RestartDecision", "CrashHistory", "stop_children",
]

log = logging.getLogger("shmserve.process")

#: how long a child killed with SIGKILL (after its grace period) is waited for
KILL_WAIT_S = 5.0


# -- signals -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignalRole:
    """The signals of one process role: those that begin its graceful stop, and those it ignores."""

    name: str
    stop: tuple[signal.Signals, ...]
    ignore: tuple[signal.Signals, ...] = ()

    @property
    def stop_signal(self) -> signal.Signals:
        """The signal a parent sends to stop a process of this role."""
        return self.stop[0]


SERVE = SignalRole("serve supervisor", (signal.SIGTERM, signal.SIGINT))
API_WORKER = SignalRole("API worker", (signal.SIGTERM, signal.SIGINT))
RUNNER_WORKER = SignalRole("runner worker", (signal.SIGTERM,), (signal.SIGINT,))
RUNNER_WORKER_OUTLIVING = SignalRole("runner worker outliving SIGTERM", (signal.SIGUSR1,),
                                     (signal.SIGINT, signal.SIGTERM))


class SignalFlag:
    """Handlers for a role's stop signals that only record the signal; `stop` tells the loop to stop.

    With `wakeup`, every signal also writes to a socketpair whose `read_end` a loop can wait on
    (`multiprocessing.connection.wait`, `select`), so the signal ends the wait at once. Call
    `restore()` to put the previous handlers back. Main thread only (a Python rule for signals).
    """

    def __init__(self, role: SignalRole, *, wakeup: bool = False,
                 on_signal: Callable[[signal.Signals], None] | None = None) -> None:
        self.role = role
        self.stop = False
        self.received: signal.Signals | None = None
        self._on_signal = on_signal
        self._old: dict[int, Any] = {}
        self._old_fd: int | None = None
        self.read_end: socket.socket | None = None
        self._write_end: socket.socket | None = None
        if wakeup:
            self.read_end, self._write_end = socket.socketpair()
            self.read_end.setblocking(False)
            self._write_end.setblocking(False)
            self._old_fd = signal.set_wakeup_fd(self._write_end.fileno())
        for sig in role.ignore:
            self._old[sig] = signal.signal(sig, signal.SIG_IGN)
        for sig in role.stop:
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        sig = signal.Signals(signum)
        if not self.stop and self._on_signal is not None:
            self._on_signal(sig)
        self.received = self.received or sig
        self.stop = True

    def drain(self) -> None:
        """Empty the wake-up socket (after a wait it ended)."""
        if self.read_end is None:
            return
        try:
            while self.read_end.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def restore(self) -> None:
        """Put the previous handlers (and wake-up fd) back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self.read_end is not None and self._write_end is not None:
            signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
            self.read_end.close()
            self._write_end.close()
            self.read_end = self._write_end = None


# -- the status pipe ---------------------------------------------------------------------------------
# A child reports once on a one-way pipe: ready (with its pid) or an error (with what went wrong).
# The messages are JSON (orjson), so the parent never unpickles what a child wrote.

@dataclass(frozen=True)
class Status:
    """One message from a child: ready, or failed to start with `error`."""

    ready: bool
    pid: int = 0
    error: str = ""


def report_ready(conn: Connection) -> None:
    """Child side: tell the parent this process is ready to serve."""
    _send(conn, {"ready": True, "pid": os.getpid()})


def report_error(conn: Connection, error: str) -> None:
    """Child side: tell the parent this process failed to start, and why."""
    _send(conn, {"ready": False, "pid": os.getpid(), "error": error})


def _send(conn: Connection, msg: dict[str, Any]) -> None:
    try:
        conn.send_bytes(orjson.dumps(msg))
    except OSError:  # the parent is gone: nobody to tell
        pass


def _read(conn: Connection) -> Status:
    msg = orjson.loads(conn.recv_bytes())
    return Status(bool(msg.get("ready")), int(msg.get("pid", 0)), str(msg.get("error", "")))


# -- spawning ----------------------------------------------------------------------------------------

_env_lock = threading.Lock()  # os.environ is process-wide: one child's variables at a time


class Child:
    """One child process and the parent's end of its status pipe."""

    def __init__(self, process: Any, status: Connection) -> None:
        self.process = process
        self.status = status
        self.ready = False

    def poll(self, timeout: float = 0.0) -> Status | None:
        """The child's status message, if one comes within `timeout`; None otherwise.

        Raises EOFError when the pipe closed without a message (the child exited before it reported).
        """
        if not self.status.poll(timeout):
            return None
        try:
            status = _read(self.status)
        except OSError:
            raise EOFError from None
        self.ready = self.ready or status.ready
        return status

    def poll_quietly(self) -> Status | None:
        """`poll` without waiting, and None also when the pipe closed (the caller then sees the exit)."""
        try:
            return self.poll()
        except (EOFError, OSError):
            return None

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child if it still runs."""
        if self.process.is_alive() and self.process.pid is not None:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Release the pipe and process handles (after the process exited)."""
        self.status.close()
        if not self.process.is_alive():
            self.process.close()


def spawn(ctx: Any, target: Callable[..., Any], args: Sequence[Any], *, name: str, daemon: bool,
          env: Mapping[str, str] | None = None) -> Child:
    """Start ``target(*args, status)`` in a new process of the multiprocessing context `ctx`.

    `status` is the child's end of a one-way pipe on which it calls `report_ready` or
    `report_error`. `env` is set in the child's environment only (the spawned interpreter
    inherits the environment when it starts, so it is set around the start under a lock).
    With `daemon`, the child is killed if this process exits without stopping it.
    """
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, send), name=name, daemon=daemon)
    with _env_lock:
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            proc.start()
        except BaseException:
            recv.close()
            send.close()
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    send.close()
    return Child(proc, recv)


# -- restarts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestartPolicy:
    """When a supervisor restarts a child that exited on its own.

    Crashes are counted over the last `window_s` seconds. Past `backoff_after` of them, each
    restart waits ``backoff_base_s * 2**(crashes - backoff_after)``, at most `backoff_max_s`
    (a worker that crashes at once must not spin a CPU). Past `give_up_after`, the supervisor
    stops restarting (None: never gives up).
    """

    window_s: float
    backoff_after: int | None = None
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    give_up_after: int | None = None

    def decide(self, crashes: int) -> "RestartDecision":
        """What to do about the latest crash, given `crashes` within the window (the latest included)."""
        if self.give_up_after is not None and crashes > self.give_up_after:
            return RestartDecision(False, 0.0, crashes)
        delay = 0.0
        if self.backoff_after is not None and crashes > self.backoff_after:
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (crashes - self.backoff_after))
        return RestartDecision(True, delay, crashes)


@dataclass(frozen=True)
class RestartDecision:
    """`restart` after `delay_s`, or give up; `crashes` counts those within the policy's window."""

    restart: bool
    delay_s: float
    crashes: int


@dataclass
class CrashHistory:
    """The recent crashes of one child slot (or of a group of them), judged by a `RestartPolicy`."""

    policy: RestartPolicy
    times: list[float] = field(default_factory=list)

    def crashed(self, now: float) -> RestartDecision:
        """Record a crash at `now` (monotonic seconds) and decide on the restart."""
        self.times = [t for t in self.times if now - t < self.policy.window_s] + [now]
        return self.policy.decide(len(self.times))


# -- stopping ----------------------------------------------------------------------------------------

def stop_children(children: Iterable[Child], sig: int, grace_s: float,
                  on_kill: Callable[[Child], None] | None = None) -> None:
    """The one stop sequence: send `sig` to every child, give them `grace_s` seconds together to
    exit, then SIGKILL the rest (calling `on_kill` for each first, to say so) and wait for them."""
    children = list(children)
    for c in children:
        c.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for c in children:
        c.process.join(max(0.0, deadline - time.monotonic()))
        if c.process.is_alive():
            if on_kill is not None:
                on_kill(c)
            c.process.kill()
            c.process.join(KILL_WAIT_S)
