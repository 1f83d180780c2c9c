"""Runner worker process: accept client channels, batch waiting calls, run the model.

One process hosts one Runnable instance. Two threads:

* the *control* thread accepts client connections on a Unix socket, maps the
  client's channel segment and watches the socket for the client's exit;
* the *dispatch* loop (main thread) waits on the doorbell semaphore, reads
  new descriptors from every channel, asks the batching policy whether to run
  now, runs the method on a batch view and writes the results back.

Sockets carry only the attach handshake (segment and semaphore names); no
tensor and nothing from a request ever crosses them.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..batching import BatchPolicy, fifo_prefix
from ..registry import pid_alive
from ..runnable import MethodSignature, Runnable
from ..shm import handshake, ring
from ..shm.channel import ChannelView
from ..shm.message import decode_call, encode_result, layout, view
from ..shm.ring import BLOCK_BUSY, BLOCK_FREE, BLOCK_HEADER, U64, ChannelLayout, RingAllocator
from ..shm.segment import Segment
from ..shm.signal import Signal, Spinner, spin_budget_s, unlink_semaphore
from ..shm.tensor import TensorMeta, wrap

POLL_S = 0.25  # longest sleep between checks of the stop flag and the parent's liveness
RESULT_SPACE_WAIT_S = 2.0  # how long a result may wait for the caller to free result-arena space


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
    status: Any  # multiprocessing Connection; carries orjson bytes, never pickles
    threads: int
    parent_pid: int
    gpu: str | None = None  # the GPU this worker was given (CUDA_VISIBLE_DEVICES), if any


class Request:
    __slots__ = ("seq", "channel", "method", "meta", "tensors", "submit", "deadline", "items", "dequeue")

    def __init__(self, seq: int, channel: "WorkerChannel", method: int, meta: bytes,
                 tensors: list[TensorMeta], submit: float, deadline: float, dequeue: float) -> None:
        self.seq = seq
        self.channel = channel
        self.method = method
        self.meta = meta
        self.tensors = tensors
        self.submit = submit
        self.deadline = deadline
        self.dequeue = dequeue
        self.items = 1


class WorkerChannel:
    """The worker's side of one client channel."""

    def __init__(self, segment: Segment, sock: socket.socket, reply: Signal, client_pid: int = 0) -> None:
        self.view = ChannelView(segment, ChannelLayout.read_header(memoryview(segment.buf)))
        self.client_pid = client_pid
        self.pinned: Any = None  # page-locked request arena of a GPU worker
        self.segment = segment
        self.sock = sock
        self.reply = reply
        self.req_tail = self.view.get(ring.H_REQ_TAIL)
        self.resp_head = self.view.get(ring.H_RESP_HEAD)
        self.results = RingAllocator(self.view.layout.resp_arena_size)
        self.closed = False  # set by the control thread when the client went away
        self.dirty = False  # results written since the last post
        self.loop_wake: int | None = None  # eventfd of the client's asyncio loop, when it sent one

    def read_new(self, now: float) -> list[Request]:
        v = self.view
        head = v.get(ring.H_REQ_HEAD)
        out = []
        while self.req_tail < head:
            seq = self.req_tail
            fixed, tensors, meta = v.read_desc(v.req_slot(seq), v.req_arena)
            out.append(Request(fixed[0], self, fixed[1], meta, tensors, fixed[8], fixed[9], now))
            self.req_tail += 1
        if out:
            v.set(ring.H_REQ_TAIL, self.req_tail)
        return out

    def input_view(self, t: TensorMeta) -> np.ndarray:
        return view(self.view.req_arena, t.offset, t.nbytes, t.dtype, t.shape)

    def _block_released(self, block: list[int]) -> bool:
        return U64.unpack_from(self.view.resp_arena, block[0])[0] == BLOCK_FREE

    def alloc_result(self, nbytes: int) -> list[int] | None:
        total = BLOCK_HEADER + nbytes
        if total > self.results.size:
            return None
        deadline = 0.0
        while True:
            self.results.reclaim(self._block_released)
            block = self.results.alloc(total, 64)
            if block is not None:
                arena = self.view.resp_arena
                U64.pack_into(arena, block[0], BLOCK_BUSY)
                U64.pack_into(arena, block[0] + 8, total)
                return block
            now = time.monotonic()
            deadline = deadline or now + RESULT_SPACE_WAIT_S
            if self.closed or now > deadline:
                return None
            time.sleep(0.0005)  # the caller frees space as it drops leased results

    def write_result(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                     batch_size: int) -> None:
        """Write one response (descriptor + data block) and publish it; the post comes later."""
        v = self.view
        offsets, end = layout(tensors, 0, 64)
        meta_off = end
        nbytes = end + (len(meta) if len(meta) > ring.META_INLINE_MAX else 0)
        block = self.alloc_result(nbytes)
        if block is None:
            limit = self.results.size - BLOCK_HEADER
            what = "exceeds" if BLOCK_HEADER + nbytes > self.results.size else "does not fit (results held by the caller fill)"
            code = ring.ST_TOO_LARGE
            tensors, offsets = [], []
            meta = orjson.dumps({"type": "TensorTooLarge", "message":
                                 f"result of {nbytes / 2**20:.1f} MB {what} the {limit / 2**20:.0f} MB result arena; "
                                 "raise Runner(arena_mb=...) or drop leased results sooner", "traceback": ""})
            meta_off = 0
            block = self.alloc_result(len(meta)) if len(meta) > ring.META_INLINE_MAX else None
            base = block[0] + BLOCK_HEADER if block else 0
        else:
            base = block[0] + BLOCK_HEADER
            arena = v.resp_arena
            for (arr, _kind, dtype_str), off in zip(tensors, offsets):
                dst = view(arena, base + off, arr.nbytes, dtype_str, arr.shape)
                np.copyto(dst, arr)
        if len(meta) > ring.META_INLINE_MAX and block is not None:
            v.resp_arena[base + meta_off : base + meta_off + len(meta)] = meta
        abs_offsets = [base + o for o in offsets]
        block_off = block[0] if block else 0
        fixed = (req.seq, code, block_off, block[1] - block[0] if block else 0, base + meta_off,
                 *times, time.monotonic(), batch_size)
        v.write_desc(v.resp_slot(self.resp_head), fixed, tensors, abs_offsets, meta)
        self.resp_head += 1
        v.set(ring.H_RESP_HEAD, self.resp_head)
        self.dirty = True

    def flush(self) -> None:
        if self.dirty:
            self.dirty = False
            try:
                self.reply.post()
                efd = self.loop_wake
                if efd is not None:
                    os.eventfd_write(efd, 1)
            except Exception:
                self.closed = True

    def set_loop_wake(self, fd: int) -> None:
        """The client's event loop listens on this eventfd: signal it with every post."""
        old, self.loop_wake = self.loop_wake, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        self.closed = True
        if self.loop_wake is not None:
            os.close(self.loop_wake)
            self.loop_wake = None
        if self.pinned is not None:
            try:
                self.pinned.unregister()
            except Exception:
                pass
            self.pinned = None
        try:
            self.sock.close()
        except OSError:
            pass
        self.reply.close()
        try:
            self.view.release()
        except BufferError:
            pass
        self.segment.close()


class MethodSlot:
    """Per-method dispatch state."""

    def __init__(self, index: int, sig: MethodSignature, func: Any, max_batch_size: int, max_latency_ms: float) -> None:
        self.index = index
        self.sig = sig
        self.func = func
        self.max_batch_size = max_batch_size
        self.policy = BatchPolicy(max_batch_size, max_latency_ms / 1000.0)
        self.queues: dict[Any, deque[Request]] = {}


class Dispatcher:
    """The dispatch loop of one worker."""

    def __init__(self, spec: WorkerSpec, instance: Runnable, doorbell: Signal) -> None:
        self.spec = spec
        self.doorbell = doorbell
        self.methods = [
            MethodSlot(i, sig, getattr(instance, sig.name), mbs, mlat) for i, (sig, mbs, mlat) in enumerate(spec.methods)
        ]
        self.channels: list[WorkerChannel] = []
        self.stopping = False
        self._gpu: Any = None  # shmserve.gpu.HandoffLedger, created when a CUDA tensor first crosses
        self.busy: dict[int, MethodSlot] = {}  # methods with queued calls, by index
        self.arrived = 0  # calls read since the main loop last reset it

    # -- intake ----------------------------------------------------------------
    def intake(self) -> None:
        now = time.monotonic()
        live = []
        for ch in self.channels:
            if ch.closed:
                self._drop(ch)
                continue
            live.append(ch)
            for req in ch.read_new(now):
                self.arrived += 1
                self._enqueue(req)
        if len(live) != len(self.channels):
            self.channels = live

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
            for q in m.queues.values():
                if any(r.channel is ch for r in q):
                    kept = [r for r in q if r.channel is not ch]
                    q.clear()
                    q.extend(kept)
        ch.close()

    def _enqueue(self, req: Request) -> None:
        if req.method >= len(self.methods):
            self._fail([req], ring.ST_BAD_REQUEST, "BadRequest", f"unknown method index {req.method}", "")
            return
        m = self.methods[req.method]
        tensors = req.tensors
        if m.sig.batchable and tensors:
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
            # Calls join only with calls of the same non-tensor arguments, dtypes and trailing shapes.
            key: Any = (req.meta, tuple([(t.dtype, t.shape[:dim] + t.shape[dim + 1:], t.kind) for t in tensors]))
        else:
            key = None  # not joinable: runs alone, in arrival order
        q = m.queues.get(key)
        if q is None:
            q = m.queues[key] = deque()
            self.busy[m.index] = m
        q.append(req)
        if key is not None:
            m.policy.on_arrival(req.submit, req.items)

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
                    items = [r.items for r in q]
                    d = m.policy.decide(items, q[0].submit, q[-1].submit, now)
                    if not d.run:
                        wake = min(wake, d.wait_until)
                        break
                    self._run(m, _take(q, d.calls), batched=True)
                    self._flush()
                    self.intake()  # calls that arrived while the model ran join the next decision
                if not q:
                    del m.queues[key]
            if not m.queues:
                self.busy.pop(m.index, None)
        self._flush()  # errors written during intake
        return wake

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
                        self._run(m, _take(q, fifo_prefix([r.items for r in q], m.max_batch_size)[0]),
                                  batched=True)
            m.queues.clear()
        self.busy.clear()
        self._flush()

    # -- execution ---------------------------------------------------------------
    def _run(self, m: MethodSlot, batch: list[Request], batched: bool) -> None:
        t_batch = time.monotonic()
        if any(r.deadline and r.deadline <= t_batch for r in batch):
            live = [r for r in batch if not r.deadline or r.deadline > t_batch]
            self._fail([r for r in batch if r not in live], ring.ST_EXPIRED, "RunnerTimeout",
                       "the call's deadline passed before it ran", "")
            batch = live
            if not batch:
                return
        try:
            args, kwargs = self._assemble(m, batch, batched)
        except Exception as exc:
            self._fail(batch, ring.ST_BAD_REQUEST, "InvalidInput", str(exc), traceback.format_exc())
            return
        t_model = time.monotonic()
        try:
            out = m.func(*args, **kwargs)
        except Exception as exc:
            self._fail(batch, ring.ST_MODEL_ERROR, type(exc).__name__, str(exc), traceback.format_exc())
            return
        finally:
            del args, kwargs
        t_done = time.monotonic()
        total = sum(r.items for r in batch)
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
            r.channel.write_result(r, ring.ST_OK, tensors, meta, (r.dequeue, t_batch, t_model, t_done), total)

    def _assemble(self, m: MethodSlot, batch: list[Request], batched: bool) -> tuple[list[Any], dict[str, Any]]:
        first = batch[0]
        if len(batch) == 1:
            tensors = [wrap(first.channel.input_view(t), t.kind, t.dtype) for t in first.tensors]
            return decode_call(tensors, first.meta, self.device)
        dim = m.sig.input_dim
        tensors = []
        for j, t0 in enumerate(first.tensors):
            tensors.append(wrap(_join([r.channel for r in batch], [r.tensors[j] for r in batch], dim), t0.kind, t0.dtype))
        return decode_call(tensors, first.meta, self.device)

    def _split(self, m: MethodSlot, out: Any, batch: list[Request]) -> list[Any]:
        dim = m.sig.output_dim
        sizes = [r.items for r in batch]
        total = sum(sizes)
        bounds = np.cumsum([0] + sizes)

        def cut(x: Any) -> list[Any]:
            if isinstance(x, np.ndarray) or _is_torch(x):
                got = x.shape[dim] if x.ndim > dim else None
                if got != total:
                    raise ValueError(
                        f"method {m.sig.name!r} returned shape {tuple(x.shape)} for a batch of {total} items "
                        f"joined along dim {dim}; a batchable method must return its batch along batch_dim"
                    )
                return [x[(slice(None),) * dim + (slice(bounds[i], bounds[i + 1]),)] for i in range(len(batch))]
            if isinstance(x, (tuple, list)) and any(isinstance(v, np.ndarray) or _is_torch(v) for v in x):
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
            r.channel.write_result(r, code, [], meta, (r.dequeue, now, now, now), len(batch))


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _join(channels: list[WorkerChannel], metas: list[TensorMeta], dim: int) -> np.ndarray:
    """One array for several calls' tensors: a view when they are adjacent in one arena, else one copy."""
    ch0, t0 = channels[0], metas[0]
    if dim == 0 and all(c is ch0 for c in channels):
        contiguous = all(metas[i].offset + metas[i].nbytes == metas[i + 1].offset for i in range(len(metas) - 1))
        if contiguous:
            rows = sum(t.shape[0] for t in metas)
            nbytes = sum(t.nbytes for t in metas)
            return view(ch0.view.req_arena, t0.offset, nbytes, t0.dtype, (rows,) + t0.shape[1:])
    return np.concatenate([c.input_view(t) for c, t in zip(channels, metas)], axis=dim)


# -- the control thread --------------------------------------------------------------
class ControlServer(threading.Thread):
    """Accepts client channels and notices clients that went away."""

    def __init__(self, listener: socket.socket, dispatcher: Dispatcher, spec: WorkerSpec, methods_info: dict[str, Any]) -> None:
        super().__init__(name="shmserve-control", daemon=True)
        self.listener = listener
        self.dispatcher = dispatcher
        self.spec = spec
        self.methods_info = methods_info
        self.sel = selectors.DefaultSelector()
        self.stop_r, self.stop_w = os.pipe()
        # Clients whose socket closed while their pid still looked alive (a killed process closes its
        # files before it turns into a zombie): (pid, reply semaphore name, give-up time).
        self.departed: list[tuple[int, str, float]] = []

    def run(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self.stop_r, selectors.EVENT_READ, "stop")
        while True:
            for key, _ in self.sel.select(0.1 if self.departed else None):
                if key.data == "stop":
                    return
                if key.data is None:
                    self._accept()
                else:
                    self._client_event(key.fileobj, key.data)  # type: ignore[arg-type]
            if self.departed:
                self._sweep_departed()

    def _sweep_departed(self) -> None:
        """Remove the reply semaphore of each departed client once it is dead; a client that
        detached and lives on (or is still alive after 5 s) removes its own."""
        now = time.monotonic()
        keep = []
        for pid, name, give_up in self.departed:
            if not pid_alive(pid):
                unlink_semaphore(name)  # a killed client cannot unlink it itself
            elif now < give_up:
                keep.append((pid, name, give_up))
        self.departed = keep

    def stop(self) -> None:
        os.write(self.stop_w, b"x")

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(5.0)
        channel = None
        try:
            req = handshake.receive(sock)
            segment = Segment.attach(req["segment"])
            try:
                reply = Signal.open(req["signal"])
                channel = WorkerChannel(segment, sock, reply, int(req.get("pid", 0)))
                if self.spec.gpu:
                    channel.pinned = _pin(channel)
            except BaseException:
                segment.close()
                raise
            handshake.send(sock, {"ok": True, "doorbell": self.spec.doorbell_name, "pid": os.getpid(),
                                  "methods": self.methods_info})
        except Exception as exc:
            try:
                handshake.send(sock, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            except OSError:
                pass
            sock.close()
            if channel is not None:
                channel.close()
            return
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, channel)
        self.dispatcher.channels = self.dispatcher.channels + [channel]

    def _client_event(self, sock: socket.socket, channel: WorkerChannel) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 64, 4)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        for fd in fds[1:]:
            os.close(fd)
        if fds:
            if data.startswith(b"W"):  # the client's event loop wake-up eventfd
                channel.set_loop_wake(fds[0])
            else:
                os.close(fds[0])
        if not data:  # the client closed its end: it exited or detached
            self.sel.unregister(sock)
            channel.closed = True
            self.dispatcher.doorbell.post()
            if channel.client_pid:
                self.departed.append((channel.client_pid, channel.reply.name, time.monotonic() + 5.0))
                self._sweep_departed()


# -- process main ----------------------------------------------------------------------
def _pin(channel: WorkerChannel) -> Any:
    """Page-lock a GPU worker's request arena so batch views reach the device by DMA."""
    try:
        from ..gpu import register_host

        return register_host(channel.view.req_arena, keep_export=False)
    except Exception as exc:  # no usable CUDA here: serve from pageable memory
        print(f"shmserve: could not pin the request arena ({exc}); host-to-device copies will stage",
              file=sys.stderr)
        return None


def _status(conn: Any, **msg: Any) -> None:
    try:
        conn.send_bytes(orjson.dumps(msg))
    except OSError:
        pass


def main(spec: WorkerSpec) -> None:
    """Entry point of a runner worker process (spawned by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    stop = threading.Event()

    def on_term(_signo: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    doorbell = Signal.open(spec.doorbell_name)
    try:
        spin_s = spin_budget_s()  # a bad SHMSERVE_SPIN_US fails the start, with its message
        instance = spec.runnable_class(**spec.init_params)
        _set_threads(spec.threads)
    except BaseException:
        _status(spec.status, ready=False, error=traceback.format_exc())
        raise SystemExit(1) from None
    dispatcher = Dispatcher(spec, instance, doorbell)
    methods_info = {
        sig.name: {"index": i, "batchable": sig.batchable, "input_dim": sig.input_dim, "output_dim": sig.output_dim,
                   "max_batch_size": mbs, "max_latency_ms": mlat}
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
    _status(spec.status, ready=True, pid=os.getpid())
    # A lone caller's next call tends to come within a few tens of µs: poll for it instead of
    # sleeping, since waking a sleeping process on another CPU is what such a call costs most.
    # Only after a wake-up that brought one call, though: when calls come in bunches the CPUs are
    # busy producing them, and polling would take CPU time from the processes that make them.
    spinner = Spinner(spin_s)
    check_parent_at = 0.0
    try:
        wake = time.monotonic() + POLL_S
        while not stop.is_set():
            timeout = max(0.0, min(wake - time.monotonic(), POLL_S))
            try:
                if dispatcher.busy or dispatcher.arrived > 1:  # a batch waits for its window, or load
                    doorbell.wait(timeout)
                else:
                    spinner.wait(doorbell, timeout)
                dispatcher.arrived = 0
            except Exception:  # interrupted by a signal: re-check the flags
                pass
            if doorbell.value():
                doorbell.drain()
            dispatcher.intake()
            wake = dispatcher.step()
            now = time.monotonic()
            if now > check_parent_at:
                check_parent_at = now + POLL_S
                if os.getppid() != spec.parent_pid:
                    break  # the supervisor is gone (killed): nobody would restart or clean up after us
        # Graceful stop: serve what has already arrived, then exit.
        dispatcher.intake()
        dispatcher.drain_all()
    finally:
        control.stop()
        try:
            os.unlink(spec.socket_path)
        except OSError:
            pass
        for ch in dispatcher.channels:
            ch.flush()


def _take(q: deque[Request], calls: int) -> list[Request]:
    """The first `calls` queued calls (the FIFO prefix the batching policy chose)."""
    return [q.popleft() for _ in range(calls)]


def _set_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(threads)
        except Exception:
            pass
