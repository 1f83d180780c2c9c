"""CUDA tensors across processes by IPC handle: export, open, release.

Producer (the process whose memory it is)::

    d = export_handle(t, consumer_pid=worker_pid)   # JSON-able dict; t kept alive
    ...                                               # d travels in a descriptor
    release(d["token"])                               # consumer is done with it

Consumer::

    t = open_handle(d)              # same kind, same GPU, no copy; waits on d's event
    ...                             # use t; drop it when done
    for sender, token in collect_releases():
        send release(token) to process `sender`

Ordering: `export_handle` records an interprocess event on the producer's
current stream; `open_handle` makes the consumer's current stream wait on it
(no host blocking). The reverse direction is `collect_releases`: a token is
handed out only after the work the consumer queued before dropping its views
has finished, so the producer may reuse the memory at once.

All state is per process and created on first use.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from .. import settings
from ..registry import pid_alive as _pid_alive
from ..tensors import is_device
from . import driver as _driver
from .driver import CudaError, GpuUnavailable
from .frameworks import DTYPES, byte_extent, current_stream, describe, empty, from_pointer, tensor_kind
from .handles import DeviceHandle, ImportCache, PendingReleases, ReleaseTable

is_device_tensor = is_device  # the name `shmserve.gpu` and the ledger use


@dataclass
class _State:
    pid: int
    exports: ReleaseTable
    imports: ImportCache
    pending: PendingReleases
    lock: threading.Lock = field(default_factory=threading.Lock)
    free_events: dict[int, list[int]] = field(default_factory=dict)  # device -> pooled IPC events
    event_handles: dict[int, bytes] = field(default_factory=dict)  # our IPC event -> its handle
    opened_events: dict[tuple[int, bytes], int] = field(default_factory=dict)  # (sender, handle) -> event
    uuids: dict[int, bytes] = field(default_factory=dict)


_STATES: dict[int, _State] = {}  # by pid, filled on first GPU use: a forked child starts empty
_STATES_LOCK = threading.Lock()


def _new_state(pid: int) -> _State:
    drv = _driver.load()

    def open_mem(handle: bytes, device: int) -> int:
        drv.ensure_context(device)
        return drv.ipc_open_mem(handle)

    def close_mem(base: int, device: int) -> None:
        drv.ensure_context(device)
        drv.ipc_close_mem(base)

    return _State(
        pid=pid,
        exports=ReleaseTable(),
        imports=ImportCache(open_mem, close_mem, max_idle=settings.cuda_ipc_max_idle()),
        pending=PendingReleases(done=lambda m: _marker_done(drv, m), discard=lambda m: drv.event_destroy(m[1])),
    )


def _marker_done(drv: _driver.Driver, marker: tuple[int, int]) -> bool:
    drv.ensure_context(marker[0])
    return drv.event_done(marker[1])


def _state() -> _State:
    """This process's state, created (loading the driver) on first use."""
    pid = os.getpid()
    st = _STATES.get(pid)
    if st is None:
        with _STATES_LOCK:
            st = _STATES.get(pid)
            if st is None:
                st = _STATES[pid] = _new_state(pid)
    return st


def _existing() -> _State | None:
    """This process's state if it ever used the GPU path, else None (no driver load)."""
    return _STATES.get(os.getpid())


def _uuid(st: _State, drv: _driver.Driver, device: int) -> bytes:
    uuid = st.uuids.get(device)
    if uuid is None:
        uuid = st.uuids[device] = drv.device_uuid(device)
    return uuid


def _local_device(st: _State, drv: _driver.Driver, uuid: bytes) -> int:
    for index, known in st.uuids.items():
        if known == uuid:
            return index
    for index in range(drv.device_count()):
        if _uuid(st, drv, index) == uuid:
            return index
    raise GpuUnavailable(
        f"the tensor lives on GPU {uuid.hex()} which this process cannot see "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); assign that GPU to this runner"
    )


def export_handle(x: Any, *, consumer_pid: int | None = None) -> dict[str, Any]:
    """Describe device tensor `x` by CUDA IPC handle and keep it alive until `release`.

    Returns a JSON-able dict (`DeviceHandle.to_dict`). The handle names the
    allocation that contains `x` (its base, since caching allocators carve
    tensors out of larger blocks) and `offset` says where `x` starts in it. An
    interprocess event is recorded on the current stream so the consumer
    cannot read before the writes queued so far have landed. `consumer_pid`,
    if known, lets `sweep()` drop the entry when that process dies; else call
    `claim()` once known.
    """
    info = describe(x)
    if any(n == 0 for n in info.shape):
        raise ValueError(f"an empty CUDA tensor (shape {info.shape}) has no memory to share; send its shape instead")
    drv = _driver.load()
    drv.ensure_context(info.device)
    st = _state()
    imported = st.imports.find(info.ptr)
    if imported is not None:
        # A view of memory we opened from another process (a runner returning
        # its input): CUDA cannot re-export an imported mapping, so name the
        # owner's allocation instead.
        owner_pid, mem_handle = imported.key
        base, size = imported.base, imported.alloc_size
    else:
        owner_pid = st.pid
        base, size = drv.address_range(info.ptr)
        try:
            mem_handle = drv.ipc_mem_handle(base)
        except CudaError as exc:
            raise GpuUnavailable(
                f"cannot export this {info.kind} tensor by CUDA IPC ({exc.name}): its memory is not a plain "
                "cudaMalloc allocation. With torch, unset PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; "
                "with CuPy, use the default memory pool (not managed or async memory)"
            ) from exc
    event = _pooled_event(st, drv, info.device)
    drv.event_record(event, current_stream(info.kind, info.device))
    lo, hi = byte_extent(info.shape, info.strides, info.itemsize)
    entry = st.exports.add(
        x, mem_handle, base, size, info.device, event=event, consumer_pid=consumer_pid, span=(info.ptr + lo, info.ptr + hi)
    )
    return DeviceHandle(
        kind=info.kind,
        pid=owner_pid,
        sender=st.pid,
        token=entry.token,
        device=info.device,
        device_uuid=_uuid(st, drv, info.device),
        mem_handle=mem_handle,
        alloc_size=size,
        offset=info.ptr - base,
        shape=info.shape,
        strides=info.strides,
        dtype=info.dtype,
        event_handle=st.event_handles[event],
    ).to_dict()


def _pooled_event(st: _State, drv: _driver.Driver, device: int) -> int:
    # Events are pooled, not created per call: a consumer opens each event
    # handle once and caches it, which is only safe while the event lives.
    with st.lock:
        free = st.free_events.setdefault(device, [])
        if free:
            return free.pop()
    event = drv.event_create_interprocess()
    handle = drv.ipc_event_handle(event)
    with st.lock:
        st.event_handles[event] = handle
    return event


def release(token: int) -> bool:
    """The consumer is done with exported tensor `token`: drop our reference.

    Idempotent; returns False for an unknown or already released token.
    """
    st = _existing()
    if st is None:
        return False
    entry = st.exports.release(token)
    if entry is None:
        return False
    with st.lock:
        st.free_events.setdefault(entry.device, []).append(entry.event)
    return True


def claim(token: int, consumer_pid: int) -> None:
    """Record the process that took exported tensor `token` (for `sweep`)."""
    st = _existing()
    if st is not None:
        st.exports.claim(token, consumer_pid)


def open_handle(d: dict[str, Any] | DeviceHandle, *, copy: bool = False) -> Any:
    """Open a descriptor from `export_handle` as a tensor of the same kind on the same GPU.

    The tensor views the producer's memory (no copy) unless `copy=True`,
    which copies it on the device into memory this process owns; either way
    the consumer's current stream first waits on the producer's event.
    Each producer allocation is mapped once per process and cached. When
    the last view dies, the release becomes available from `collect_releases()`.
    """
    h = d if isinstance(d, DeviceHandle) else DeviceHandle.from_dict(d)
    drv = _driver.load()
    st = _state()
    device = _local_device(st, drv, h.device_uuid)
    drv.ensure_context(device)
    stream = current_stream(h.kind, device)
    if h.event_handle is not None:
        drv.stream_wait_event(stream, _event_for(st, drv, h.sender, h.event_handle))
    if h.pid == st.pid:
        # Our own memory coming back (e.g. a runner returned its input).
        lo, hi = byte_extent(h.shape, h.strides, DTYPES[h.dtype][1])
        entry = st.exports.find_covering(h.mem_handle, h.offset + lo, h.offset + hi)
        if entry is None:
            raise RuntimeError(
                "a CUDA tensor came back whose memory this process no longer exports; "
                "release input tokens only after opening the results"
            )
        view = from_pointer(h.kind, entry.base + h.offset, h.shape, h.strides, h.dtype, device, entry.obj)
        # The view holds our own tensor; the sender's token may go once our
        # stream has passed the sender's event.
        _queue_release(st, drv, h, None, device, stream)
        return _clone(view) if copy else view
    imported = st.imports.acquire(h, device)
    guard = _ViewGuard()
    weakref.finalize(guard, _view_died, st, h, imported, device).atexit = False
    view = from_pointer(h.kind, imported.base + h.offset, h.shape, h.strides, h.dtype, device, guard)
    if copy:
        return _clone(view)  # the view dies here; its release waits for the copy
    return view


class _ViewGuard:
    """Owner object of an opened view; its finalizer schedules the release."""


def _clone(view: Any) -> Any:
    if tensor_kind(view) == "torch":
        return view.clone(memory_format=sys.modules["torch"].contiguous_format)
    out = empty("cupy", tuple(view.shape), view.dtype.name, int(view.device.id))
    out[...] = view
    return out


def _event_for(st: _State, drv: _driver.Driver, sender: int, handle: bytes) -> int:
    if sender == st.pid:
        for event, known in st.event_handles.items():
            if known == handle:
                return event
        raise RuntimeError("a CUDA IPC event handle claims to be ours but is unknown")
    key = (sender, handle)
    with st.lock:
        cached = st.opened_events.get(key)
    if cached is not None:
        return cached
    event = drv.ipc_open_event(handle)
    with st.lock:
        st.opened_events[key] = event
    return event


def _view_died(st: _State, h: DeviceHandle, imported: Any, device: int) -> None:
    try:
        drv = _driver.load()
        drv.ensure_context(device)
        _queue_release(st, drv, h, imported, device, current_stream(h.kind, device))
    except Exception:  # pragma: no cover - interpreter or CUDA teardown
        pass


def _queue_release(st: _State, drv: _driver.Driver, h: DeviceHandle, imported: Any, device: int, stream: int) -> None:
    # The marker is recorded on the consumer stream: once it completes, every
    # kernel queued on the views before they died has finished.
    marker = drv.event_create()
    drv.event_record(marker, stream)
    st.pending.add((h.sender, h.token, imported), (device, marker))


def collect_releases() -> list[tuple[int, int]]:
    """(sender pid, token) pairs whose views died and whose queued GPU work is done.

    The transport sends each token back to its sender, which calls
    `release(token)`. Mappings whose last view is gone become idle here (and
    are unmapped beyond the idle bound). A no-op (empty list) in a process
    that never used the GPU path, so transports may call it unconditionally.
    """
    st = _existing()
    if st is None:
        return []
    out = []
    for sender, token, imported in st.pending.ready():
        if imported is not None:
            st.imports.drop_ref(imported)
        if token is not None:
            if sender == st.pid:
                release(token)
            else:
                out.append((sender, token))
    return out


def sweep() -> int:
    """Drop exports claimed by consumers that died, and mappings of producers that died.

    Returns how many exports were dropped. Call it when the supervisor
    reports a dead worker, or periodically; a no-op in a process that never
    used the GPU path.
    """
    st = _existing()
    if st is None:
        return 0
    dead = st.exports.sweep(_pid_alive)
    with st.lock:
        for entry in dead:
            st.free_events.setdefault(entry.device, []).append(entry.event)
        gone = [key for key in st.opened_events if not _pid_alive(key[0])]
        events = [st.opened_events.pop(key) for key in gone]
    drv = _driver.load()
    for event in events:
        drv.event_destroy(event)
    st.imports.drop_dead(_pid_alive)
    return len(dead)


def stats() -> dict[str, int]:
    """Counts for leak checks and metrics: outstanding exports, mapped imports, pending releases."""
    st = _existing()
    if st is None:
        return {"exports": 0, "imports": 0, "import_opens": 0, "pending_releases": 0, "pooled_events": 0}
    return {
        "exports": len(st.exports),
        "imports": len(st.imports),
        "import_opens": st.imports.opens,
        "pending_releases": len(st.pending),
        "pooled_events": sum(len(v) for v in st.free_events.values()),
    }


