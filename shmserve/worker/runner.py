"""Runner worker process: accept client channels, batch waiting calls, run the model.

One process hosts one Runnable instance. Two threads:

* the *control* thread (`control.py`) accepts client connections on a Unix
  socket, maps the client's channel segment and watches the socket for the
  client's exit;
* the *dispatch* loop (main thread, here) waits on the doorbell semaphore,
  reads new descriptors from every channel (`channel.py`), asks the batching
  policy whether to run now, runs the method on a batch view and writes the
  results back.

Sockets carry only the attach handshake (segment and semaphore names); no
tensor and nothing from a request ever crosses them.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson
import posix_ipc

from ..batching import fifo_prefix
from ..process import RUNNER_WORKER, SignalFlag, SignalRole, report_error, report_ready
from ..runnable import MethodSignature, Runnable
from ..shm import ring
from ..shm.health import HealthBoard
from ..shm.message import KIND_RAW, decode_call, encode_result, view
from ..shm.signal import Signal, Spinner, spin_budget_s
from ..shm.wire import TensorMeta
from ..tensors import from_wire, is_tensor, join, split
from ..worker_stats import WorkerStats
from .channel import Request, WorkerChannel
from .control import ControlServer
from .queues import MethodSlot, expired_reason
from .results import RETRY_S, ResultWriter
from .stream import stream_items

POLL_S = 0.25  # longest sleep between checks of the stop flag and the parent's liveness


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


class Dispatcher:
    """The dispatch loop of one worker."""

    def __init__(self, spec: WorkerSpec, instance: Runnable, doorbell: Signal) -> None:
        self.spec = spec
        self.doorbell = doorbell
        self.methods = [
            MethodSlot(i, sig, getattr(instance, sig.name), mbs, mlat) for i, (sig, mbs, mlat) in enumerate(spec.methods)
        ]
        self.channels: list[WorkerChannel] = []
        self.results = ResultWriter()  # writes results, parking those whose caller holds its arena full
        self.stopping = False
        self._gpu: Any = None  # shmserve.gpu.HandoffLedger, created when a CUDA tensor first crosses
        self.busy: dict[int, MethodSlot] = {}  # methods with queued calls, by index
        self.arrived = 0  # calls read since the main loop last reset it
        self.board: HealthBoard | None = None  # the watchdog's view of this worker, when it has one
        self.stats = WorkerStats(spec.runner_name, spec.index, [sig.name for sig, _, _ in spec.methods], spec.restarts)

    def publish_stats(self) -> None:
        """Write this worker's snapshot for ``/metrics`` (`shmserve.worker_stats`)."""
        depth = sum(len(q) for m in self.busy.values() for q in m.queues.values())
        self.stats.publish(depth, sum(ch.segment.size for ch in self.channels if not ch.closed))

    # -- intake ----------------------------------------------------------------
    def intake(self) -> None:
        now = time.monotonic()
        if self.results:
            self.results.retry(now)
        live = []
        for ch in self.channels:
            if ch.closed:
                self._drop(ch)
                continue
            live.append(ch)
            for req in ch.read_new(now):
                self.arrived += 1
                try:
                    self._enqueue(req)
                except Exception as exc:  # a descriptor this code cannot file: fail the call, not the worker
                    self._fail([req], ring.ST_BAD_REQUEST, "InvalidInput", f"the call could not be queued: {exc}",
                               traceback.format_exc())
        if len(live) != len(self.channels):
            self.channels = live
        self.publish_backlog()

    def device(self) -> Any:
        """The CUDA hand-off ledger of this worker (imports shmserve.gpu on first use)."""
        if self._gpu is None:
            from ..gpu import HandoffLedger

            self._gpu = HandoffLedger()
        return self._gpu

    def _drop(self, ch: WorkerChannel) -> None:
        if self._gpu is not None:
            from ..gpu import sweep

            sweep()
            self._gpu.forget(ch.client_pid)
        for m in self.methods:
            m.forget(ch)
        self.results.forget(ch)
        ch.close()

    def _enqueue(self, req: Request) -> None:
        if req.method >= len(self.methods):
            self._fail([req], ring.ST_BAD_REQUEST, "BadRequest", f"unknown method index {req.method}", "")
            return
        m = self.methods[req.method]
        tensors = req.tensors
        if m.sig.batchable and tensors and not any(t.kind == KIND_RAW for t in tensors):  # bytes/images run alone
            dim = m.sig.input_dim
            try:
                sizes = {t.shape[dim] for t in tensors}
            except IndexError:  # a tensor without the batch dim
                sizes = set()
            if len(sizes) != 1:
                self._fail([req], ring.ST_BAD_REQUEST, "InvalidInput",
                           f"method {m.sig.name!r} batches along dim {dim}: every tensor argument needs that "
                           f"dim with the same size, got shapes {[t.shape for t in tensors]}", "")
                return
            req.items = tensors[0].shape[dim]
            if req.items == 0:
                if not m.sig.accepts_empty:
                    self._fail([req], ring.ST_BAD_REQUEST, "InvalidInput",
                               m.sig.empty_call_error([t.shape for t in tensors]), "")
                    return
                key: Any = None  # served alone: never joined, and it teaches the batching policy nothing
            else:
                # Calls join only with calls of the same non-tensor arguments, dtypes and trailing shapes.
                key = (req.meta, tuple([(t.dtype, t.shape[:dim] + t.shape[dim + 1:], t.kind) for t in tensors]))
        else:
            key = None  # not joinable: runs alone, in arrival order
        why = expired_reason(req, req.dequeue)
        if why is not None:
            self._fail([req], ring.ST_EXPIRED, "RunnerTimeout", why, "")
            return
        why = m.refusal(req, key, req.dequeue)
        if why is not None:
            self._fail([req], ring.ST_OVERLOADED, "RunnerOverloaded", why, "")
            return
        if m.push(key, req):
            self.busy[m.index] = m

    # -- decisions ---------------------------------------------------------------
    def step(self) -> float:
        """Run every batch that is due; return the time to re-decide at the latest."""
        wake = time.monotonic() + POLL_S
        for m in list(self.busy.values()):
            for key, q in list(m.queues.items()):
                while q:
                    now = time.monotonic()
                    if key is None:
                        self._run(m, [q.popleft()], batched=False)
                        self._flush()
                        continue
                    dead = m.prune(key, q, now)
                    for r, why in dead:
                        self._fail([r], ring.ST_EXPIRED, "RunnerTimeout", why, "")
                    if not q:
                        break
                    items = [r.items for r in q]
                    d = m.policy.decide(items, q[0].submit, q[-1].submit, now)
                    if not d.run:
                        wake = min(wake, d.wait_until)
                        break
                    self._run(m, m.take(key, q, d.calls), batched=True)
                    self._flush()
                    self.intake()  # calls that arrived while the model ran join the next decision
                if not q:
                    del m.queues[key]
            if not m.queues:
                self.busy.pop(m.index, None)
        self.publish_backlog()
        self._flush()  # errors written during intake
        return wake

    def publish_backlog(self) -> None:
        """Tell every client the soonest deadline a call arriving now could have and be admitted, so
        it refuses calls due sooner at once (RunnerOverloaded) instead of sending them to be refused."""
        backlog = max([m.admission_wait(1) for m in self.busy.values() if m.queued], default=0.0)
        drained_at = time.monotonic() + backlog if backlog else 0.0
        for ch in self.channels:
            ch.view.set_time(ring.H_DRAINED_AT, drained_at)

    def _flush(self) -> None:
        for ch in self.channels:
            ch.flush()

    def drain_all(self) -> None:
        """Run everything queued, in batches, without waiting (used when stopping)."""
        for m in self.methods:
            for key, q in list(m.queues.items()):
                while q:
                    if key is None:
                        self._run(m, [q.popleft()], batched=False)
                    else:
                        self._run(m, m.take(key, q, fifo_prefix([r.items for r in q], m.max_batch_size)[0]),
                                  batched=True)
            m.clear()
        self.busy.clear()
        self._flush()

    # -- execution ---------------------------------------------------------------
    def _run(self, m: MethodSlot, batch: list[Request], batched: bool) -> None:
        """Run one batch; whatever goes wrong fails this batch's calls, never the worker."""
        try:
            self._run_batch(m, batch, batched)
        except Exception as exc:
            self._fail(batch, ring.ST_MODEL_ERROR, type(exc).__name__,
                       f"serving the batch failed in the worker: {exc}", traceback.format_exc())

    def _run_batch(self, m: MethodSlot, batch: list[Request], batched: bool) -> None:
        t_batch = time.monotonic()
        finish = t_batch + m.policy.cost.estimate(sum(r.items for r in batch)) if batched else t_batch
        live = []
        for r in batch:  # the last look before the model: expired and abandoned calls never reach it
            why = expired_reason(r, t_batch, finish)
            if why is None:
                live.append(r)
            else:
                self._fail([r], ring.ST_EXPIRED, "RunnerTimeout", why, "")
        batch = live
        if not batch:
            return
        try:
            args, kwargs = self._assemble(m, batch, batched)
        except Exception as exc:
            self._fail(batch, ring.ST_BAD_REQUEST, "InvalidInput", str(exc), traceback.format_exc())
            return
        total = sum(r.items for r in batch)
        board = self.board
        t_model = time.monotonic()
        if board is not None:
            board.begin(t_model, m.policy.cost.estimate(total) if batched else 0.0)
        try:
            out = m.func(*args, **kwargs)
        except Exception as exc:
            self._fail(batch, ring.ST_MODEL_ERROR, type(exc).__name__, str(exc), traceback.format_exc())
            return
        finally:
            del args, kwargs
            if board is not None:
                board.end(time.monotonic())
        if m.sig.stream:  # a generator: its items go back one by one (never batched, so one call)
            self.stats.on_batch(m.index, total)
            stream_items(out, batch[0], self.device, (batch[0].dequeue, t_batch, t_model), board)
            return
        t_done = time.monotonic()
        self.stats.on_batch(m.index, total)
        if batched:
            m.policy.on_batch_done(total, t_done - t_model, done_at=t_done)
        gpu = self._gpu
        try:
            parts = self._split(m, out, batch) if len(batch) > 1 else [out]
            encoded = [encode_result(p, device=self.device,
                                     releases=gpu.owed_to(r.channel.client_pid) if gpu is not None else None)
                       for p, r in zip(parts, batch)]
        except Exception as exc:
            self._fail(batch, ring.ST_MODEL_ERROR, type(exc).__name__, str(exc), traceback.format_exc())
            return
        for r, (tensors, meta) in zip(batch, encoded):
            self.results.write(r, ring.ST_OK, tensors, meta, (r.dequeue, t_batch, t_model, t_done), total)

    def _assemble(self, m: MethodSlot, batch: list[Request], batched: bool) -> tuple[list[Any], dict[str, Any]]:
        first = batch[0]
        if len(batch) == 1:
            tensors = [from_wire(first.channel.input_view(t), t.kind, t.dtype) for t in first.tensors]
            return decode_call(tensors, first.meta, self.device)
        dim = m.sig.input_dim
        tensors = []
        for j, t0 in enumerate(first.tensors):
            tensors.append(from_wire(_join([r.channel for r in batch], [r.tensors[j] for r in batch], dim), t0.kind, t0.dtype))
        return decode_call(tensors, first.meta, self.device)

    def _split(self, m: MethodSlot, out: Any, batch: list[Request]) -> list[Any]:
        dim = m.sig.output_dim
        sizes = [r.items for r in batch]
        total = sum(sizes)
        bounds = np.cumsum([0] + sizes)

        def cut(x: Any) -> list[Any]:
            if is_tensor(x):
                return split(x, sizes, dim, what=f"the result of method {m.sig.name!r}")
            if isinstance(x, (tuple, list)) and any(is_tensor(v) for v in x):
                cols = [cut(v) for v in x]
                return [type(x)(c[i] for c in cols) for i in range(len(batch))]
            if isinstance(x, (list, tuple)) and len(x) == total:
                return [list(x[bounds[i]:bounds[i + 1]]) for i in range(len(batch))]
            raise ValueError(
                f"method {m.sig.name!r} is batchable but returned {type(x).__name__}; return a tensor (or a "
                f"tuple of tensors, or a list of {total} items) along batch_dim"
            )

        return cut(out)

    def _fail(self, batch: list[Request], code: int, etype: str, message: str, tb: str) -> None:
        meta = orjson.dumps({"type": etype, "message": message, "traceback": tb})
        now = time.monotonic()
        for r in batch:
            self.results.write(r, code, [], meta, (r.dequeue, now, now, now), len(batch))


def _join(channels: list[WorkerChannel], metas: list[TensorMeta], dim: int) -> np.ndarray:
    """One array for several calls' tensors: a view when they are adjacent in one arena, else one copy."""
    ch0, t0 = channels[0], metas[0]
    if dim == 0 and all(c is ch0 for c in channels):
        contiguous = all(metas[i].offset + metas[i].nbytes == metas[i + 1].offset for i in range(len(metas) - 1))
        if contiguous:
            rows = sum(t.shape[0] for t in metas)
            nbytes = sum(t.nbytes for t in metas)
            return view(ch0.view.req_arena, t0.offset, nbytes, t0.dtype, (rows,) + t0.shape[1:])
    return join([c.input_view(t) for c, t in zip(channels, metas)], dim)  # type: ignore[no-any-return]


# -- process main ----------------------------------------------------------------------
def main(spec: WorkerSpec, status: Connection) -> None:
    """Entry point of a runner worker process (spawned by `shmserve.worker.group`); it reports
    on `status` (`shmserve.process.report_ready` / `report_error`)."""
    # The handlers only record the signal; the loop below checks it at least every POLL_S.
    # Ctrl-C is the supervisor's to handle; under `shmserve serve` a SIGTERM to the whole process
    # group must not stop us while the API workers still drain their calls (`shmserve.process`).
    stop = SignalFlag(spec.signals)
    doorbell = Signal.open(spec.doorbell_name)
    try:
        spin_s = spin_budget_s()  # a bad SHMSERVE_SPIN_US fails the start, with its message
        instance = spec.runnable_class(**spec.init_params)
        _set_threads(spec.threads)
    except BaseException:
        report_error(status, traceback.format_exc())
        raise SystemExit(1) from None
    dispatcher = Dispatcher(spec, instance, doorbell)
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
    control = ControlServer(listener, dispatcher, spec, methods_info)
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


def _set_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(threads)
        except Exception:
            pass
