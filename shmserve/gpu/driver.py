"""A thin ctypes binding to the CUDA driver API (libcuda), loaded on first use.

Why the driver API rather than torch's or CuPy's wrappers: libcuda ships with
the NVIDIA driver itself, so one code path serves torch tensors, CuPy arrays and
bare shared-memory arenas, whichever framework (if any) is installed. Handles
and events are the same objects in the runtime API, so memory and streams that
torch or CuPy created work here unchanged.

Nothing here runs at import time; `load()` opens the library and caches it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import CudaError, GpuUnavailable, ShmserveError  # noqa: F401  (re-exported: part of shmserve.gpu)

IPC_HANDLE_SIZE = 64  # bytes in CUipcMemHandle and CUipcEventHandle
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1
CU_EVENT_DISABLE_TIMING = 0x2
CU_EVENT_INTERPROCESS = 0x4
CU_MEMHOSTREGISTER_PORTABLE = 0x1
CU_MEMHOSTREGISTER_READ_ONLY = 0x8
CUDA_SUCCESS = 0
CUDA_ERROR_NOT_READY = 600
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712
CUDA_ERROR_ALREADY_MAPPED = 208

_LIB_NAMES = ("libcuda.so.1", "libcuda.so")


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_char * 16)]


# (symbol candidates, argtypes); newer symbols first: the header macros map the
# plain names onto the _v2 entry points since CUDA 4/11.
_SIGNATURES: dict[str, tuple[tuple[str, ...], list[Any]]] = {
    "init": (("cuInit",), [ctypes.c_uint]),
    "device_count": (("cuDeviceGetCount",), [ctypes.POINTER(ctypes.c_int)]),
    "device_get": (("cuDeviceGet",), [ctypes.POINTER(ctypes.c_int), ctypes.c_int]),
    "device_uuid": (("cuDeviceGetUuid_v2", "cuDeviceGetUuid"), [ctypes.POINTER(_Uuid), ctypes.c_int]),
    "primary_ctx_retain": (("cuDevicePrimaryCtxRetain",), [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]),
    "ctx_get_current": (("cuCtxGetCurrent",), [ctypes.POINTER(ctypes.c_void_p)]),
    "ctx_set_current": (("cuCtxSetCurrent",), [ctypes.c_void_p]),
    "mem_get_address_range": (
        ("cuMemGetAddressRange_v2",),
        [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64],
    ),
    "ipc_get_mem_handle": (("cuIpcGetMemHandle",), [ctypes.POINTER(_IpcHandle), ctypes.c_uint64]),
    "ipc_open_mem_handle": (
        ("cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle"),
        [ctypes.POINTER(ctypes.c_uint64), _IpcHandle, ctypes.c_uint],
    ),
    "ipc_close_mem_handle": (("cuIpcCloseMemHandle",), [ctypes.c_uint64]),
    "event_create": (("cuEventCreate",), [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]),
    "event_record": (("cuEventRecord",), [ctypes.c_void_p, ctypes.c_void_p]),
    "event_query": (("cuEventQuery",), [ctypes.c_void_p]),
    "event_destroy": (("cuEventDestroy_v2", "cuEventDestroy"), [ctypes.c_void_p]),
    "ipc_get_event_handle": (("cuIpcGetEventHandle",), [ctypes.POINTER(_IpcHandle), ctypes.c_void_p]),
    "ipc_open_event_handle": (("cuIpcOpenEventHandle",), [ctypes.POINTER(ctypes.c_void_p), _IpcHandle]),
    "stream_wait_event": (("cuStreamWaitEvent",), [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]),
    "stream_synchronize": (("cuStreamSynchronize",), [ctypes.c_void_p]),
    "mem_host_register": (("cuMemHostRegister_v2", "cuMemHostRegister"), [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]),
    "mem_host_unregister": (("cuMemHostUnregister",), [ctypes.c_void_p]),
    "memcpy_htod_async": (
        ("cuMemcpyHtoDAsync_v2", "cuMemcpyHtoDAsync"),
        [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p],
    ),
    "memcpy_dtod_async": (
        ("cuMemcpyDtoDAsync_v2", "cuMemcpyDtoDAsync"),
        [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
    ),
    "get_error_name": (("cuGetErrorName",), [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]),
}


@dataclass
class Driver:
    """The loaded libcuda functions plus this process's primary contexts."""

    lib: ctypes.CDLL
    fns: dict[str, Any]
    contexts: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, name: str, *args: Any) -> int:
        """Call driver function `name`; raise CudaError on any result but success."""
        rc = int(self.fns[name](*args))
        if rc != CUDA_SUCCESS:
            raise self.error(name, rc)
        return rc

    def call_status(self, name: str, *args: Any) -> int:
        """Call `name` and return its CUresult without raising (for queries)."""
        return int(self.fns[name](*args))

    def error(self, name: str, rc: int) -> CudaError:
        """Build a CudaError for result `rc` of driver function `name`."""
        sym = ctypes.c_char_p()
        try:
            self.fns["get_error_name"](rc, ctypes.byref(sym))
            symbol = (sym.value or b"").decode() or f"CUresult {rc}"
        except Exception:  # pragma: no cover - error path of the error path
            symbol = f"CUresult {rc}"
        return CudaError(f"CUDA driver call {name} failed with {symbol} ({rc})", rc, symbol)

    # -- contexts --------------------------------------------------------------
    def ensure_context(self, device: int) -> None:
        """Make `device`'s primary context (the one torch and CuPy use) current on this thread."""
        ctx = self.contexts.get(device)
        if ctx is None:
            with self.lock:
                ctx = self.contexts.get(device)
                if ctx is None:
                    count = self.device_count()
                    if not 0 <= device < count:
                        raise GpuUnavailable(
                            f"CUDA device {device} is not visible to this process ({count} visible, "
                            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                        )
                    dev = ctypes.c_int()
                    self.call("device_get", ctypes.byref(dev), device)
                    handle = ctypes.c_void_p()
                    self.call("primary_ctx_retain", ctypes.byref(handle), dev.value)
                    ctx = int(handle.value or 0)
                    self.contexts[device] = ctx
        current = ctypes.c_void_p()
        self.call("ctx_get_current", ctypes.byref(current))
        if int(current.value or 0) != ctx:
            self.call("ctx_set_current", ctypes.c_void_p(ctx))

    def device_count(self) -> int:
        """Number of CUDA devices visible to this process."""
        n = ctypes.c_int()
        self.call("device_count", ctypes.byref(n))
        return int(n.value)

    def device_uuid(self, device: int) -> bytes:
        """The 16-byte UUID of `device`: stable across processes, unlike the index,
        which depends on each process's CUDA_VISIBLE_DEVICES."""
        dev = ctypes.c_int()
        self.call("device_get", ctypes.byref(dev), device)
        uuid = _Uuid()
        self.call("device_uuid", ctypes.byref(uuid), dev.value)
        return bytes(uuid.bytes)

    def device_by_uuid(self, uuid: bytes) -> int | None:
        """The local index of the device with this UUID, or None if it is not visible."""
        for i in range(self.device_count()):
            if self.device_uuid(i) == uuid:
                return i
        return None

    # -- memory ------------------------------------------------------------------
    def address_range(self, ptr: int) -> tuple[int, int]:
        """(base, size) of the cudaMalloc allocation that contains device pointer `ptr`."""
        base, size = ctypes.c_uint64(), ctypes.c_size_t()
        self.call("mem_get_address_range", ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr))
        return int(base.value), int(size.value)

    def ipc_mem_handle(self, base: int) -> bytes:
        """The IPC handle of the allocation starting at `base`."""
        h = _IpcHandle()
        self.call("ipc_get_mem_handle", ctypes.byref(h), ctypes.c_uint64(base))
        return ctypes.string_at(ctypes.addressof(h), IPC_HANDLE_SIZE)

    def ipc_open_mem(self, handle: bytes) -> int:
        """Map another process's allocation; returns its base address here."""
        ptr = ctypes.c_uint64()
        self.call("ipc_open_mem_handle", ctypes.byref(ptr), _to_handle(handle), CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
        return int(ptr.value)

    def ipc_close_mem(self, base: int) -> None:
        """Unmap an allocation opened with `ipc_open_mem`."""
        self.call("ipc_close_mem_handle", ctypes.c_uint64(base))

    # -- events and streams -----------------------------------------------------------
    def event_create(self) -> int:
        """A new event with timing disabled (the cheapest kind), for local ordering."""
        ev = ctypes.c_void_p()
        self.call("event_create", ctypes.byref(ev), CU_EVENT_DISABLE_TIMING)
        return int(ev.value or 0)

    def event_create_interprocess(self) -> int:
        """A new event that other processes can open (timing disabled, as IPC requires)."""
        ev = ctypes.c_void_p()
        self.call("event_create", ctypes.byref(ev), CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS)
        return int(ev.value or 0)

    def ipc_event_handle(self, event: int) -> bytes:
        """The IPC handle of an interprocess event."""
        h = _IpcHandle()
        self.call("ipc_get_event_handle", ctypes.byref(h), ctypes.c_void_p(event))
        return ctypes.string_at(ctypes.addressof(h), IPC_HANDLE_SIZE)

    def ipc_open_event(self, handle: bytes) -> int:
        """Open another process's interprocess event."""
        ev = ctypes.c_void_p()
        self.call("ipc_open_event_handle", ctypes.byref(ev), _to_handle(handle))
        return int(ev.value or 0)

    def event_record(self, event: int, stream: int) -> None:
        """Record `event` on `stream` (0 is the legacy default stream)."""
        self.call("event_record", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def event_done(self, event: int) -> bool:
        """True once all work captured by the event's last record has finished."""
        rc = self.call_status("event_query", ctypes.c_void_p(event))
        if rc == CUDA_SUCCESS:
            return True
        if rc == CUDA_ERROR_NOT_READY:
            return False
        raise self.error("event_query", rc)

    def event_destroy(self, event: int) -> None:
        """Destroy an event (created here or opened from a handle)."""
        self.call("event_destroy", ctypes.c_void_p(event))

    def stream_wait_event(self, stream: int, event: int) -> None:
        """Make later work on `stream` wait for `event`, without blocking the host."""
        self.call("stream_wait_event", ctypes.c_void_p(stream), ctypes.c_void_p(event), 0)

    def stream_synchronize(self, stream: int) -> None:
        """Block the host until `stream` is idle."""
        self.call("stream_synchronize", ctypes.c_void_p(stream))

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Queue a host-to-device copy (a DMA when `src` is page-locked)."""
        self.call("memcpy_htod_async", ctypes.c_uint64(dst), ctypes.c_void_p(src), nbytes, ctypes.c_void_p(stream))

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Queue a device-to-device copy."""
        self.call("memcpy_dtod_async", ctypes.c_uint64(dst), ctypes.c_uint64(src), nbytes, ctypes.c_void_p(stream))


def _to_handle(raw: bytes) -> _IpcHandle:
    if len(raw) != IPC_HANDLE_SIZE:
        raise ValueError(f"a CUDA IPC handle has {IPC_HANDLE_SIZE} bytes, got {len(raw)}")
    h = _IpcHandle()
    ctypes.memmove(ctypes.addressof(h), raw, IPC_HANDLE_SIZE)
    return h


@functools.lru_cache(maxsize=1)
def _load_for_pid(pid: int) -> Driver:
    # Keyed by pid: a forked child must re-run cuInit (and CUDA forbids using a
    # parent's context after fork anyway; use the spawn start method).
    lib = None
    errors = []
    for name in _LIB_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(str(exc))
    if lib is None:
        raise GpuUnavailable(
            "the NVIDIA driver library libcuda.so.1 is not installed or not on the loader path "
            f"({'; '.join(errors)}); GPU hand-off needs an NVIDIA GPU host with its driver"
        )
    fns: dict[str, Any] = {}
    for key, (symbols, argtypes) in _SIGNATURES.items():
        for sym in symbols:
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = argtypes
                fn.restype = ctypes.c_int
                fns[key] = fn
                break
        else:
            raise GpuUnavailable(f"libcuda lacks {symbols[0]}; upgrade the NVIDIA driver (CUDA 11.4 or newer)")
    driver = Driver(lib, fns)
    rc = int(fns["init"](0))
    if rc == CUDA_ERROR_NO_DEVICE:
        raise GpuUnavailable(
            "no CUDA device is visible to this process "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    if rc != CUDA_SUCCESS:
        raise driver.error("cuInit", rc)
    return driver


def load() -> Driver:
    """The CUDA driver for this process; raises GpuUnavailable naming what is missing."""
    return _load_for_pid(os.getpid())


def available() -> bool:
    """True when libcuda loads and at least one device is visible. Never raises."""
    try:
        return load().device_count() > 0
    except ShmserveError:
        return False
