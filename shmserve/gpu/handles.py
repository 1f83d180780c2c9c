"""The bookkeeping of CUDA IPC hand-off, free of any CUDA call (unit-testable on CPU).

* `DeviceHandle`: the JSON-able descriptor that travels instead of tensor bytes.
* `ReleaseTable`: producer side; keeps each exported tensor alive until its
  consumer releases it, and drops the entries of consumers that died.
* `ImportCache`: consumer side; maps each (producer pid, allocation handle)
  once, since CUDA allows one open per handle per process, and unmaps idle
  mappings beyond a bound.
* `PendingReleases`: consumer side; releases whose views died, held back
  until the GPU work queued on them has finished.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .frameworks import DTYPES, KINDS, byte_extent

HANDLE_MARKER = "__cuda_ipc__"
HANDLE_VERSION = 1
IPC_HANDLE_SIZE = 64


@dataclass(frozen=True)
class DeviceHandle:
    """A device tensor described by reference: which allocation, where in it, what shape.

    `mem_handle` names the whole allocation (caching allocators hand out
    sub-blocks of one cudaMalloc); `offset` is the tensor's first element
    relative to the allocation base, in bytes. `device_uuid` identifies the GPU
    across processes whose CUDA_VISIBLE_DEVICES differ; `device` is only the
    producer's own index. `token` is what the consumer hands back to
    `release()` *of the sender* (`sender`, the process that built this
    descriptor; it owns the token and the event). `pid` is the process that
    owns the allocation; the two differ when a runner hands back a view of a
    tensor it received. None means nothing to release.
    """

    kind: str
    pid: int
    sender: int
    token: int | None
    device: int
    device_uuid: bytes
    mem_handle: bytes
    alloc_size: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    event_handle: bytes | None

    @property
    def cache_key(self) -> tuple[int, bytes]:
        """Key of the consumer's mapping cache: one open per producer allocation."""
        return (self.pid, self.mem_handle)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bytes as base64), tagged so the transport can recognise it."""
        return {
            HANDLE_MARKER: HANDLE_VERSION,
            "kind": self.kind,
            "pid": self.pid,
            "sender": self.sender,
            "token": self.token,
            "device": self.device,
            "device_uuid": _b64(self.device_uuid),
            "mem_handle": _b64(self.mem_handle),
            "alloc_size": self.alloc_size,
            "offset": self.offset,
            "shape": list(self.shape),
            "strides": list(self.strides),
            "dtype": self.dtype,
            "event_handle": None if self.event_handle is None else _b64(self.event_handle),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "DeviceHandle":
        """Parse and validate a dict made by `to_dict` (raises ValueError naming the bad field)."""
        if not is_handle_dict(d):
            raise ValueError("not a shmserve CUDA IPC handle (missing the __cuda_ipc__ marker)")
        if d[HANDLE_MARKER] != HANDLE_VERSION:
            raise ValueError(
                f"CUDA IPC handle version {d[HANDLE_MARKER]!r} is not {HANDLE_VERSION}; "
                "client and runner run different shmserve versions"
            )
        try:
            h = cls(
                kind=_str(d, "kind"),
                pid=_int(d, "pid"),
                sender=_int(d, "sender"),
                token=None if d.get("token") is None else _int(d, "token"),
                device=_int(d, "device"),
                device_uuid=_unb64(d, "device_uuid", 16),
                mem_handle=_unb64(d, "mem_handle", IPC_HANDLE_SIZE),
                alloc_size=_int(d, "alloc_size"),
                offset=_int(d, "offset"),
                shape=tuple(_int_list(d, "shape")),
                strides=tuple(_int_list(d, "strides")),
                dtype=_str(d, "dtype"),
                event_handle=None if d.get("event_handle") is None else _unb64(d, "event_handle", IPC_HANDLE_SIZE),
            )
        except KeyError as exc:
            raise ValueError(f"CUDA IPC handle lacks field {exc.args[0]!r}") from None
        h.validate()
        return h

    def validate(self) -> None:
        """Reject descriptors that would map outside their allocation."""
        if self.kind not in KINDS:
            raise ValueError(f"CUDA IPC handle kind {self.kind!r} is not one of {KINDS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"CUDA IPC handle dtype {self.dtype!r} is not supported")
        if len(self.shape) != len(self.strides) or any(n < 0 for n in self.shape):
            raise ValueError(f"CUDA IPC handle has bad shape {self.shape} / strides {self.strides}")
        if self.pid <= 0 or self.sender <= 0 or self.device < 0 or self.alloc_size <= 0:
            raise ValueError("CUDA IPC handle has a non-positive pid, device or allocation size")
        lo, hi = byte_extent(self.shape, self.strides, DTYPES[self.dtype][1])
        if hi > lo and (self.offset + lo < 0 or self.offset + hi > self.alloc_size):
            raise ValueError(
                f"CUDA IPC handle reaches bytes [{self.offset + lo}, {self.offset + hi}) "
                f"outside its {self.alloc_size}-byte allocation"
            )


def is_handle_dict(obj: Any) -> bool:
    """True for a dict produced by `DeviceHandle.to_dict` (any version)."""
    return isinstance(obj, dict) and HANDLE_MARKER in obj


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(d: dict[str, Any], key: str, size: int) -> bytes:
    value = d[key]
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != size:
        raise ValueError(f"CUDA IPC handle field {key!r} must be base64 of {size} bytes")
    return raw


def _int(d: dict[str, Any], key: str) -> int:
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"CUDA IPC handle field {key!r} must be an integer, got {value!r}")
    return value


def _str(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise ValueError(f"CUDA IPC handle field {key!r} must be a string, got {value!r}")
    return value


def _int_list(d: dict[str, Any], key: str) -> list[int]:
    value = d[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"CUDA IPC handle field {key!r} must be a list of integers, got {value!r}")
    return value


# -- producer side -------------------------------------------------------------------


@dataclass
class Export:
    """One exported tensor, kept alive until released."""

    token: int
    obj: Any
    mem_handle: bytes
    base: int
    alloc_size: int
    device: int
    event: Any
    consumer_pid: int | None
    created: float
    span: tuple[int, int] = (0, 0)  # absolute [lo, hi) device addresses the tensor covers


class ReleaseTable:
    """Exported tensors by token. Thread-safe: completions may release from a helper thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[int, Export] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def add(
        self, obj: Any, mem_handle: bytes, base: int, alloc_size: int, device: int,
        event: Any = None, consumer_pid: int | None = None, span: tuple[int, int] = (0, 0),
    ) -> Export:
        """Keep `obj` alive under a new token; `span` is the address range it covers."""
        with self._lock:
            entry = Export(
                next(self._tokens), obj, mem_handle, base, alloc_size, device, event, consumer_pid, self._clock(), span
            )
            self._entries[entry.token] = entry
        return entry

    def claim(self, token: int, consumer_pid: int) -> None:
        """Record which process consumes `token` (so `sweep` can drop it if that process dies)."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is not None:
                entry.consumer_pid = consumer_pid

    def release(self, token: int) -> Export | None:
        """Drop the entry of `token`; None if unknown or already released (idempotent)."""
        with self._lock:
            return self._entries.pop(token, None)

    def sweep(self, is_alive: Callable[[int], bool]) -> list[Export]:
        """Drop and return the entries whose consumer process is no longer alive."""
        with self._lock:
            dead = [e for e in self._entries.values() if e.consumer_pid is not None and not is_alive(e.consumer_pid)]
            for e in dead:
                del self._entries[e.token]
        return dead

    def find_covering(self, mem_handle: bytes, lo: int, hi: int) -> Export | None:
        """A live export in allocation `mem_handle` whose tensor covers bytes [lo, hi)
        counted from the allocation base.

        Used when our own memory comes back: the view must keep alive the
        tensor it points into, not merely another tensor of the same block.
        """
        with self._lock:
            for e in self._entries.values():
                if e.mem_handle == mem_handle and e.span[0] - e.base <= lo and hi <= e.span[1] - e.base:
                    return e
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def tokens(self) -> list[int]:
        """Tokens not yet released, oldest first."""
        with self._lock:
            return sorted(self._entries)


# -- consumer side -------------------------------------------------------------------


@dataclass
class Import:
    """One producer allocation mapped into this process."""

    key: tuple[int, bytes]
    base: int
    alloc_size: int
    device: int
    refs: int = 0
    last_used: float = field(default=0.0)


class ImportCache:
    """Opened IPC allocations, keyed by (producer pid, handle bytes).

    `open_fn(mem_handle, device) -> base` and `close_fn(base, device)` do the
    mapping. An entry with live views (`refs > 0`) is never closed; at most
    `max_idle` idle entries stay mapped, the least recently used closed first,
    because re-opening costs far more than a lookup and producers' caching
    allocators hand out the same blocks again and again.
    """

    def __init__(
        self,
        open_fn: Callable[[bytes, int], int],
        close_fn: Callable[[int, int], None],
        max_idle: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = open_fn
        self._close = close_fn
        self.max_idle = max_idle
        self._clock = clock
        self._entries: OrderedDict[tuple[int, bytes], Import] = OrderedDict()
        self._lock = threading.RLock()
        self.opens = 0  # count of real opens, for tests and metrics

    def acquire(self, handle: DeviceHandle, device: int) -> Import:
        """The mapping of `handle`'s allocation, opening it on first use; adds one reference."""
        with self._lock:
            entry = self._entries.get(handle.cache_key)
            if entry is None:
                base = self._open(handle.mem_handle, device)
                self.opens += 1
                entry = Import(handle.cache_key, base, handle.alloc_size, device)
                self._entries[handle.cache_key] = entry
            entry.refs += 1
            entry.last_used = self._clock()
            self._entries.move_to_end(handle.cache_key)
            return entry

    def drop_ref(self, entry: Import) -> None:
        """One view of `entry` died; close idle mappings beyond `max_idle`."""
        with self._lock:
            entry.refs -= 1
            self._trim()

    def _trim(self) -> None:
        idle = [e for e in self._entries.values() if e.refs <= 0]
        for e in idle[: max(0, len(idle) - self.max_idle)]:
            self._close_entry(e)

    def _close_entry(self, e: Import) -> None:
        del self._entries[e.key]
        self._close(e.base, e.device)

    def drop_dead(self, is_alive: Callable[[int], bool]) -> int:
        """Close idle mappings of producers that died; returns how many were closed."""
        with self._lock:
            dead = [e for e in self._entries.values() if e.refs <= 0 and not is_alive(e.key[0])]
            for e in dead:
                self._close_entry(e)
            return len(dead)

    def find(self, ptr: int) -> Import | None:
        """The mapping that contains device address `ptr`, if any."""
        with self._lock:
            for e in self._entries.values():
                if e.base <= ptr < e.base + e.alloc_size:
                    return e
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def close_all(self) -> None:
        """Close every idle mapping (at shutdown)."""
        with self._lock:
            for e in [e for e in self._entries.values() if e.refs <= 0]:
                self._close_entry(e)


class PendingReleases:
    """Releases held back until the GPU work queued on their views has finished.

    When the last view of an imported tensor dies, kernels queued before may
    still read it; `add(item, marker)` stores a marker (an event recorded on
    the consumer's stream) and `ready()` hands out, in order, the items whose
    marker `done(marker)` reports finished.
    """

    def __init__(self, done: Callable[[Any], bool], discard: Callable[[Any], None] | None = None) -> None:
        self._done = done
        self._discard = discard
        self._items: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def add(self, item: Any, marker: Any) -> None:
        """Queue `item` until `marker` is done."""
        with self._lock:
            self._items.append((item, marker))

    def ready(self) -> list[Any]:
        """Items whose marker is done, oldest first; they leave the queue."""
        with self._lock:
            keep, out = [], []
            for item, marker in self._items:
                if self._done(marker):
                    out.append(item)
                    if self._discard is not None:
                        self._discard(marker)
                else:
                    keep.append((item, marker))
            self._items = keep
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
