"""Page-locked shared-memory arenas: host-to-device copies by DMA, with no staging copy.

A runner whose methods run on a GPU registers each arena once, when it maps
it (`cudaHostRegister` is slow: it pins every page), and unregisters before
unmapping it::

    region = register_host(arena_mmap)          # once per arena
    batch = to_device(batch_view, device=0)     # async DMA out of the arena
    ...
    region.unregister()                          # before arena_mmap.close()

A region holds a buffer export of the arena, so closing the mmap while it is
still registered fails loudly (BufferError) instead of unmapping pinned pages.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import driver as _driver
from .driver import (
    CU_MEMHOSTREGISTER_PORTABLE,
    CU_MEMHOSTREGISTER_READ_ONLY,
    CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
    CudaError,
)
from .frameworks import DTYPES, current_stream, empty


@dataclass
class PinnedRegion:
    """A page-locked host range. Registered once per (address, size) per process;
    each `register_host` of the same range adds a reference, each `unregister` drops one."""

    ptr: int
    size: int
    device: int
    read_only: bool
    refs: int = 1
    _keep: Any = field(default=None, repr=False)

    @property
    def registered(self) -> bool:
        """True until the last reference is unregistered."""
        return self.refs > 0

    def contains(self, ptr: int, nbytes: int) -> bool:
        """True if [ptr, ptr + nbytes) lies inside this region."""
        return self.ptr <= ptr and ptr + nbytes <= self.ptr + self.size

    def unregister(self) -> None:
        """Drop one reference; the last one unpins the pages (idempotent after that)."""
        _registry().unregister(self)

    def __enter__(self) -> "PinnedRegion":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()


class _Registry:
    def __init__(self) -> None:
        self.regions: dict[tuple[int, int], PinnedRegion] = {}
        self.lock = threading.Lock()

    def register(self, buffer: Any, device: int, read_only: bool | None, keep_export: bool = True) -> PinnedRegion:
        view = memoryview(buffer)
        if not view.c_contiguous:
            raise ValueError("register_host needs a contiguous buffer (an mmap, a SharedMemory.buf or a slice of one)")
        if view.nbytes == 0:
            # cudaHostRegister(ptr, 0) fails and leaves a sticky error on some
            # drivers that poisons later calls in the same context.
            raise ValueError("refusing to page-lock a zero-size buffer; register the arena after sizing it")
        array = np.frombuffer(view, dtype=np.uint8)
        ptr, size = int(array.ctypes.data), int(view.nbytes)
        ro = view.readonly if read_only is None else read_only
        with self.lock:
            region = self.regions.get((ptr, size))
            if region is not None:
                region.refs += 1
                return region
            drv = _driver.load()
            drv.ensure_context(device)
            flags = CU_MEMHOSTREGISTER_PORTABLE | (CU_MEMHOSTREGISTER_READ_ONLY if ro else 0)
            try:
                drv.call("mem_host_register", ptr, size, flags)
            except CudaError as exc:
                if exc.code == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
                    raise ValueError(
                        f"host range {ptr:#x}+{size} overlaps a range already page-locked by other code; "
                        "register each arena exactly once, as a whole"
                    ) from exc
                raise
            region = PinnedRegion(ptr, size, device, ro, 1, array if keep_export else None)
            self.regions[(ptr, size)] = region
            return region

    def unregister(self, region: PinnedRegion) -> None:
        with self.lock:
            if region.refs <= 0:
                return
            region.refs -= 1
            if region.refs > 0:
                return
            self.regions.pop((region.ptr, region.size), None)
            drv = _driver.load()
            drv.ensure_context(region.device)
            drv.call("mem_host_unregister", region.ptr)
            region._keep = None

    def find(self, ptr: int, nbytes: int) -> PinnedRegion | None:
        with self.lock:
            for region in self.regions.values():
                if region.contains(ptr, nbytes):
                    return region
        return None


@functools.lru_cache(maxsize=1)
def _registry_for(pid: int) -> _Registry:
    return _Registry()


def _registry() -> _Registry:
    return _registry_for(os.getpid())


def register_host(
    buffer: Any, *, device: int = 0, read_only: bool | None = None, keep_export: bool = True
) -> PinnedRegion:
    """Page-lock `buffer` (an mmap, `SharedMemory.buf`, any contiguous writable or
    read-only buffer) so copies out of it run as DMA. Registering the same range
    again returns the same region with one more reference.

    With `keep_export` (the default) the region holds a buffer export, so the
    mapping cannot be closed while registered; pass False only for a mapping
    that lives as long as the process.

    Raises ValueError for an empty or non-contiguous buffer, GpuUnavailable on
    a host without CUDA.
    """
    return _registry().register(buffer, device, read_only, keep_export)


def root_buffer(array: np.ndarray) -> Any:
    """The object that owns the memory behind `array` (an mmap, bytearray, ...),
    found by following `.base` and `memoryview.obj`; None for numpy-owned memory."""
    obj: Any = array
    while isinstance(obj, np.ndarray):
        if obj.base is None:
            return None
        obj = obj.base
    while isinstance(obj, memoryview):
        obj = obj.obj
    return obj


def pin_arena_of(array: np.ndarray, device: int = 0) -> PinnedRegion | None:
    """Page-lock the whole shared-memory arena that `array` is a view of, once per process.

    For a runner method that receives batch views and wants DMA copies before
    the transport registers its arenas itself. Returns None when `array` is not
    a view of an external buffer. The arena must outlive the process's use of
    the region (worker arenas do), since no buffer export is held.
    """
    root = root_buffer(array)
    if root is None:
        return None
    # A GPU worker pins only the request arena of each channel's segment (a slice of the
    # mapping): a view inside it is served by that region, since CUDA refuses to lock the
    # whole mapping over it.
    inside = _registry().find(int(array.ctypes.data), int(array.nbytes))
    if inside is not None:
        return inside
    view = memoryview(root)
    found = _registry().find(int(np.frombuffer(view, dtype=np.uint8).ctypes.data), view.nbytes)
    return found if found is not None else register_host(view, device=device, keep_export=False)


def unregister(region: PinnedRegion) -> None:
    """Drop one reference to `region` (the last unpins it)."""
    region.unregister()


def is_pinned(array: np.ndarray) -> bool:
    """True if `array`'s bytes lie inside a region registered by this process."""
    return _registry().find(int(array.ctypes.data), int(array.nbytes)) is not None


def to_device(
    view: np.ndarray, device: int = 0, stream: Any = None, *, kind: str = "torch", require_pinned: bool = False
) -> Any:
    """Copy a contiguous host array (typically a batch view of an arena) to `device`, asynchronously.

    Returns a new `kind` tensor. The copy is queued on `stream` (a
    torch.cuda.Stream, cupy Stream, raw CUstream int, or None for the current
    stream) and returns at once when the source is page-locked; from pageable
    memory the driver stages it and the call blocks. Until the stream has run
    the copy, the source bytes must not change: synchronize the stream or
    wait on an event before the arena range is reused.
    """
    array = np.asarray(view)
    if not array.flags.c_contiguous:
        raise ValueError("to_device needs a C-contiguous array (an arena batch view is one)")
    dtype = array.dtype.name
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype} cannot be copied to the GPU by shmserve; supported: {sorted(DTYPES)}")
    if require_pinned and not is_pinned(array):
        raise ValueError("to_device(require_pinned=True): the array is not inside a registered arena; call register_host first")
    drv = _driver.load()
    drv.ensure_context(device)
    out = empty(kind, tuple(array.shape), dtype, device)
    raw_stream = _stream_handle(stream, kind, device)
    if array.nbytes:
        dst = int(out.data_ptr()) if kind == "torch" else int(out.data.ptr)
        drv.memcpy_htod_async(dst, int(array.ctypes.data), int(array.nbytes), raw_stream)
    if kind == "torch" and hasattr(stream, "cuda_stream") and raw_stream != current_stream(kind, device):
        # torch's allocator must not hand `out` to the current stream before the copy's stream is done.
        out.record_stream(stream)
    return out


def _stream_handle(stream: Any, kind: str, device: int) -> int:
    if stream is None:
        return current_stream(kind, device)
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"stream must be a torch.cuda.Stream, a cupy Stream, a CUstream int or None, got {type(stream).__name__}")
