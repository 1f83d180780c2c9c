"""The dispatch loop of a runner worker: intake, batching decisions, running batches, results.

The loop (`shmserve.worker.runner.main` drives it) reads new descriptors from every channel,
queues each call under its batch key (`shmserve.worker.queues`), asks the batching policy
(`shmserve.batching`) whether to run now, runs the method on the joined batch
(`shmserve.worker.batch`) and writes each call's share back (`shmserve.worker.results`).
Whatever goes wrong with one call or one batch fails those calls, never the worker.
"""
from __future__ import annotations

import logging
import time
import traceback
from itertools import islice
from typing import Any

import numpy as np
import orjson

from ..batching import fifo_prefix
from ..runnable import MethodSignature, Runnable
from ..shm import ring
from ..shm.health import HealthBoard
from ..shm.message import decode_call, encode_result
from ..tensors import from_wire, to_wire
from ..worker_stats import WorkerStats
from .batch import join_inputs, split_result
from .call_log import log_failure, log_slow
from .channel import Request, WorkerChannel
from .queues import MethodSlot, Refused, file_calls, still_wanted
from .results import ResultWriter, rows_of, wants_region
from .stream import stream_items

__all__ = ["Dispatcher", "POLL_S"]

POLL_S = 0.25  # longest sleep between checks of the stop flag and the parent's liveness
log = logging.getLogger("shmserve.worker")


class Dispatcher:
    """The dispatch loop of one worker."""

    def __init__(self, instance: Runnable, methods: list[tuple[MethodSignature, int, float]],
                 stats: WorkerStats) -> None:
        self.methods = [
            MethodSlot(i, sig, getattr(instance, sig.name), mbs, mlat) for i, (sig, mbs, mlat) in enumerate(methods)
        ]
        self.channels: list[WorkerChannel] = []
        self.results = ResultWriter()  # writes results, parking those whose caller holds its arena full
        self.stopping = False
        self._gpu: Any = None  # shmserve.gpu.HandoffLedger, created when a CUDA tensor first crosses
        self.busy: dict[int, MethodSlot] = {}  # methods with queued calls, by index
        self.arrived = 0  # calls read since the main loop last reset it
        self.board: HealthBoard | None = None  # the watchdog's view of this worker, when it has one
        self.stats = stats
        self.slow_call_s: float | None = None  # calls at least this long are logged (`call_log.log_slow`); None: off

    def publish_stats(self) -> None:
        """Write this worker's snapshot for ``/metrics`` (`shmserve.worker_stats`)."""
        depth = sum(len(q) for m in self.busy.values() for q in m.queues.values())
        self.stats.publish(depth, sum(ch.segment.size for ch in self.channels if not ch.closed))

    # -- intake ----------------------------------------------------------------
    def add_channel(self, ch: WorkerChannel) -> None:
        """A new client's channel (called by the control thread: the list is replaced, never changed,
        so the dispatch loop iterates a consistent one)."""
        self.channels = self.channels + [ch]

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
            reqs = ch.read_new(now)
            if reqs:
                self.arrived += len(reqs)
                refused: list[Refused] = []
                file_calls(self.methods, reqs, now, self.busy, refused)
                for req, code, etype, why, tb in refused:
                    self._fail([req], code, etype, why, tb)
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
                    # the FIFO prefix spans at most max_batch_size calls (a joinable call has an item):
                    # one more tells `decide` that more is queued, the same decision as the whole queue
                    items = [r.items for r in islice(q, m.max_batch_size + 1)]
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

    def publish_backlog(self, busy_until: float = 0.0) -> None:
        """Tell every client the soonest deadline a call arriving now could have and be admitted (the
        work queued, after the batch running until `busy_until`), so it refuses calls due sooner at once
        (RunnerOverloaded) instead of sending them to be refused when the loop reads them."""
        busy = self.busy
        backlog = max([m.admission_wait(1) for m in busy.values() if m.queued], default=0.0) if busy else 0.0
        drained_at = max(time.monotonic(), busy_until) + backlog if backlog or busy_until else 0.0
        for ch in self.channels:
            if ch.drained_sent != drained_at:  # only the worker writes the word: unchanged, not rewritten
                ch.view.set_time(ring.H_DRAINED_AT, drained_at)
                ch.drained_sent = drained_at

    def _flush(self) -> None:
        for ch in self.channels:
            if ch.dirty:  # `WorkerChannel.flush` tests it too; read here, no frame for a channel with nothing new
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
        """Run one batch; whatever goes wrong fails this batch's calls not answered yet, never the worker."""
        self.results.answered.clear()
        try:
            self._run_batch(m, batch, batched)
        except Exception as exc:  # a call answered already gets no second answer (its caller moved on)
            self._fail([r for r in batch if id(r) not in self.results.answered], ring.ST_MODEL_ERROR,
                       type(exc).__name__, f"serving the batch failed in the worker: {exc}", traceback.format_exc())

    def _run_batch(self, m: MethodSlot, batch: list[Request], batched: bool) -> None:
        t_batch = time.monotonic()
        finish = t_batch + m.policy.cost.estimate(sum(r.items for r in batch)) if batched else t_batch
        batch, dead = still_wanted(batch, t_batch, finish)  # expired and abandoned calls never reach the model
        for r, why in dead:
            self._fail([r], ring.ST_EXPIRED, "RunnerTimeout", why, "")
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
        estimate = m.policy.cost.estimate(total) if batched else 0.0
        if board is not None:
            board.begin(t_model, estimate)
        if estimate:  # nobody reads the channels while the model runs: callers learn now when it ends
            self.publish_backlog(busy_until=t_model + estimate)
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
            stream_items(out, batch[0], self.device, (batch[0].dequeue, t_batch, t_model), board, m.sig.name)
            return
        t_done = time.monotonic()
        self.stats.on_batch(m.index, total)
        if batched:
            m.policy.on_batch_done(total, t_done - t_model, done_at=t_done)
        log_slow(batch, m.sig.name, self.slow_call_s, t_batch, t_model, t_done, total)  # before either write path below
        gpu = self._gpu
        if gpu is None and (self.results.write_array(batch, out, m.sig.output_dim, (t_batch, t_model, t_done))
                            if batched else write_alone(self.results, batch, out, (t_batch, t_model, t_done), total)):
            return  # one array of rows: one copy per call, no views (`ResultWriter.write_array`, `write_alone`)
        try:
            parts = split_result(m.sig.name, out, [r.items for r in batch], m.sig.output_dim) if len(batch) > 1 else [out]
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
        else:
            tensors = [from_wire(join_inputs([r.channel for r in batch], [r.tensors[j] for r in batch], m.sig.input_dim),
                                 t0.kind, t0.dtype) for j, t0 in enumerate(first.tensors)]
        return decode_call(tensors, first.meta, self.device)

    def _fail(self, batch: list[Request], code: int, etype: str, message: str, tb: str) -> None:
        meta, now = orjson.dumps({"type": etype, "message": message, "traceback": tb}), time.monotonic()
        for r in batch:
            _log_failure(r, self.methods, code, etype, message)  # before its answer: its slot holds its tag
            self.results.write(r, code, [], meta, (r.dequeue, now, now, now), len(batch))


def _log_failure(r: Request, methods: list[MethodSlot], code: int, etype: str, message: str) -> None:
    """Log call `r`'s failure, naming the HTTP request it serves (see `shmserve.worker.call_log`)."""
    log_failure(r, methods[r.method].sig.name if r.method < len(methods) else f"#{r.method}", code, etype, message)


def write_alone(results: ResultWriter, batch: list[Request], out: Any, times: tuple[float, float, float],
                batch_size: int) -> bool:
    """Write the OK result of a call that ran alone when it is one array (`rows_of`) and its channel
    has room now and nothing parked: one `WorkerChannel.publish_rows` of its rows, as a batch's
    (`ResultWriter.write_array`), instead of the general write. False, nothing written, otherwise."""
    if len(batch) != 1 or type(out) is not np.ndarray or not out.ndim or not out.shape[0]:
        return False
    r = batch[0]
    ch = r.channel
    if (ch in results.parked or ch.closed or not rows_of(out, out.shape[0], 0) or not ch.response_slot_free()
            or wants_region(ch)):  # a call may name an output destination: the general write (results.py)
        return False
    arr, kind, dtype_str = to_wire(out, "result")
    ch.reclaim_results()
    nbytes = arr.nbytes
    block = ch.results.alloc(ring.BLOCK_HEADER + nbytes, 64)  # `WorkerChannel.reserve_result`, inlined: once per call
    if block is None:
        return False
    try:
        ch.publish_rows(arr, [(r.seq, block[0], block[1] - block[0], 0, nbytes, arr.shape[0], r.dequeue)],
                        dtype_str.encode(), kind, arr.shape[1:], times, batch_size)
    except Exception:  # nothing was written: the general path writes it, or fails the call
        ch.results.release(block)
        return False
    results.answered.add(id(r))
    return True
