"""The ctypes driver binding against a fake libcuda compiled here.

The fake implements the CUDA driver entry points shmserve uses, with host
memory standing in for device memory and CUDA's error rules (one open per
IPC handle, interprocess events only, no zero-size or overlapping host
registrations). It checks what the no-GPU tests cannot: that every ctypes
signature marshals its arguments and outputs correctly (structs by value,
out-pointers, 64-bit addresses), and that error codes surface as CudaError
with the driver's name. Behaviour of the real driver stays for the gpu-marked
tests.
"""
from __future__ import annotations

import ctypes
import gc
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shmserve.gpu import driver as driver_mod
from shmserve.gpu import ipc, pinned
from shmserve.gpu.driver import CudaError, GpuUnavailable
from shmserve.gpu.frameworks import DeviceTensorInfo

FAKE_LIBCUDA = r"""
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct { char reserved[64]; } Handle64;
typedef struct { char bytes[16]; } Uuid;
typedef struct { unsigned flags; void* stream; int records; int done; } Event;

static struct { CUdeviceptr base; size_t size; int open; } allocs[64];
static int nallocs;
static struct { char* p; size_t n; } regs[64];
static int nregs;
static __thread void* current_ctx;
static void* last_wait_stream; static void* last_wait_event;
static char errname[64];

CUdeviceptr fake_alloc(size_t size) {
    void* p = NULL;
    if (posix_memalign(&p, 512, size)) return 0;
    memset(p, 0, size);
    allocs[nallocs].base = (CUdeviceptr)p; allocs[nallocs].size = size; allocs[nallocs].open = 0;
    nallocs++;
    return (CUdeviceptr)p;
}
void* fake_current_ctx(void) { return current_ctx; }
void* fake_last_wait_stream(void) { return last_wait_stream; }
void* fake_last_wait_event(void) { return last_wait_event; }
int fake_event_records(Event* e) { return e->records; }
void* fake_event_stream(Event* e) { return e->stream; }
void fake_event_set_done(Event* e) { e->done = 1; }
int fake_registered(void) { return nregs; }

CUresult cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
CUresult cuDeviceGetCount(int* n) { *n = 2; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal < 0 || ordinal > 1) return 101; *d = ordinal; return 0; }
CUresult cuDeviceGetUuid_v2(Uuid* u, int dev) { memset(u->bytes, 'A' + dev, 16); return 0; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) { *ctx = (void*)(0x1000UL + dev); return 0; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = current_ctx; return 0; }
CUresult cuCtxSetCurrent(void* ctx) { current_ctx = ctx; return 0; }

static int find_alloc(CUdeviceptr p) {
    for (int i = 0; i < nallocs; ++i)
        if (allocs[i].base <= p && p < allocs[i].base + allocs[i].size) return i;
    return -1;
}
CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr p) {
    int i = find_alloc(p);
    if (i < 0) return 1;
    *base = allocs[i].base; *size = allocs[i].size; return 0;
}
CUresult cuIpcGetMemHandle(Handle64* h, CUdeviceptr p) {
    int i = find_alloc(p);
    if (i < 0 || allocs[i].base != p) return 1;   /* like CUDA: must be an allocation */
    memset(h, 0, sizeof *h); memcpy(h->reserved, "MEMH", 4); memcpy(h->reserved + 8, &p, 8);
    return 0;
}
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr* out, Handle64 h, unsigned flags) {
    CUdeviceptr p;
    if (memcmp(h.reserved, "MEMH", 4) != 0 || flags != 1) return 1;
    memcpy(&p, h.reserved + 8, 8);
    int i = find_alloc(p);
    if (i < 0) return 1;
    if (allocs[i].open) return 208;              /* CUDA_ERROR_ALREADY_MAPPED */
    allocs[i].open = 1; *out = p; return 0;
}
CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
    int i = find_alloc(p);
    if (i < 0 || !allocs[i].open) return 1;
    allocs[i].open = 0; return 0;
}
CUresult cuEventCreate(Event** ev, unsigned flags) {
    Event* e = calloc(1, sizeof(Event)); e->flags = flags; *ev = e; return 0;
}
CUresult cuEventRecord(Event* e, void* stream) { e->stream = stream; e->records++; e->done = 0; return 0; }
CUresult cuEventQuery(Event* e) { return e->done ? 0 : 600; }
CUresult cuEventDestroy_v2(Event* e) { free(e); return 0; }
CUresult cuIpcGetEventHandle(Handle64* h, Event* e) {
    if ((e->flags & 6) != 6) return 1;           /* interprocess needs disable-timing too */
    memset(h, 0, sizeof *h); memcpy(h->reserved, "EVTH", 4); memcpy(h->reserved + 8, &e, sizeof e);
    return 0;
}
CUresult cuIpcOpenEventHandle(Event** ev, Handle64 h) {
    if (memcmp(h.reserved, "EVTH", 4) != 0) return 1;
    memcpy(ev, h.reserved + 8, sizeof *ev); return 0;
}
CUresult cuStreamWaitEvent(void* stream, Event* e, unsigned flags) {
    if (flags != 0) return 1;
    last_wait_stream = stream; last_wait_event = e; return 0;
}
CUresult cuStreamSynchronize(void* stream) { return 0; }
CUresult cuMemHostRegister_v2(char* p, size_t n, unsigned flags) {
    if (n == 0) return 1;
    for (int i = 0; i < nregs; ++i)
        if (p < regs[i].p + regs[i].n && regs[i].p < p + n) return 712;
    regs[nregs].p = p; regs[nregs].n = n; nregs++; return 0;
}
CUresult cuMemHostUnregister(char* p) {
    for (int i = 0; i < nregs; ++i) if (regs[i].p == p) { regs[i] = regs[--nregs]; return 0; }
    return 713;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* stream) {
    if (find_alloc(dst) < 0) return 1;
    memcpy((void*)dst, src, n); return 0;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* stream) {
    memcpy((void*)dst, (const void*)src, n); return 0;
}
CUresult cuGetErrorName(CUresult r, const char** s) {
    snprintf(errname, sizeof errname, "CUDA_ERROR_FAKE_%d", r); *s = errname; return 0;
}
"""


@pytest.fixture(scope="module")
def fake_lib_path(tmp_path_factory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the fake libcuda")
    folder = tmp_path_factory.mktemp("fakecuda")
    (folder / "fake.c").write_text(FAKE_LIBCUDA)
    lib = folder / "libcuda_fake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(folder / "fake.c"), "-o", str(lib)], check=True, timeout=120)
    return lib


@pytest.fixture
def drv(fake_lib_path, monkeypatch):
    monkeypatch.setattr(driver_mod, "_LIB_NAMES", (str(fake_lib_path),))
    driver_mod._load_for_pid.cache_clear()
    ipc._STATES.clear()
    pinned._registry_for.cache_clear()
    d = driver_mod.load()
    fake = d.lib
    for name in ("fake_alloc", "fake_current_ctx", "fake_last_wait_stream", "fake_last_wait_event",
                 "fake_event_stream"):
        getattr(fake, name).restype = ctypes.c_uint64
    fake.fake_alloc.argtypes = [ctypes.c_size_t]
    for name in ("fake_event_records", "fake_event_stream", "fake_event_set_done"):
        getattr(fake, name).argtypes = [ctypes.c_void_p]
    yield d
    driver_mod._load_for_pid.cache_clear()
    ipc._STATES.clear()
    pinned._registry_for.cache_clear()


def test_devices_contexts_and_uuids(drv):
    assert driver_mod.available() and drv.device_count() == 2
    assert drv.device_uuid(1) == b"B" * 16 and drv.device_by_uuid(b"A" * 16) == 0
    assert drv.device_by_uuid(b"Z" * 16) is None
    drv.ensure_context(1)
    assert drv.lib.fake_current_ctx() == 0x1001
    drv.ensure_context(0)
    assert drv.lib.fake_current_ctx() == 0x1000
    with pytest.raises(GpuUnavailable, match="device 5 is not visible"):
        drv.ensure_context(5)


def test_memory_handles_marshal_and_errors_carry_the_driver_name(drv):
    base = drv.lib.fake_alloc(1 << 20)
    assert drv.address_range(base + 4096 + 3) == (base, 1 << 20)
    handle = drv.ipc_mem_handle(base)
    assert len(handle) == 64 and handle[:4] == b"MEMH"
    assert drv.ipc_open_mem(handle) == base
    with pytest.raises(CudaError) as err:
        drv.ipc_open_mem(handle)
    assert err.value.code == 208 and err.value.name == "CUDA_ERROR_FAKE_208"
    drv.ipc_close_mem(base)
    assert drv.ipc_open_mem(handle) == base
    drv.ipc_close_mem(base)
    with pytest.raises(CudaError, match="cuIpcGetMemHandle|ipc_get_mem_handle"):
        drv.ipc_mem_handle(base + 16)
    with pytest.raises(ValueError, match="64 bytes"):
        drv.ipc_open_mem(b"short")


def test_events_streams_and_copies(drv):
    ev = drv.event_create_interprocess()
    handle = drv.ipc_event_handle(ev)
    assert drv.ipc_open_event(handle) == ev
    drv.event_record(ev, 0xABC)
    assert drv.lib.fake_event_records(ev) == 1 and drv.lib.fake_event_stream(ev) == 0xABC
    assert drv.event_done(ev) is False
    drv.lib.fake_event_set_done(ev)
    assert drv.event_done(ev) is True
    drv.stream_wait_event(0xDEF, ev)
    assert (drv.lib.fake_last_wait_stream(), drv.lib.fake_last_wait_event()) == (0xDEF, ev)
    plain = drv.event_create()
    with pytest.raises(CudaError):
        drv.ipc_event_handle(plain)  # only interprocess events have handles
    drv.event_destroy(plain)
    drv.event_destroy(ev)
    dst = drv.lib.fake_alloc(4096)
    src = np.arange(1024, dtype=np.float32)
    drv.memcpy_htod_async(dst + 0, int(src.ctypes.data), src.nbytes, 0)
    assert ctypes.string_at(dst, src.nbytes) == src.tobytes()
    other = drv.lib.fake_alloc(4096)
    drv.memcpy_dtod_async(other, dst, 4096, 0)
    assert ctypes.string_at(other, 4096) == src.tobytes()
    drv.stream_synchronize(0)


def test_host_registration_is_counted_once_and_refuses_overlaps(drv):
    buf = bytearray(1 << 16)
    region = pinned.register_host(buf)
    assert pinned.register_host(buf) is region and region.refs == 2
    assert drv.lib.fake_registered() == 1
    arr = np.frombuffer(buf, dtype=np.float32)[16:32]
    assert pinned.is_pinned(arr)
    with pytest.raises(ValueError, match="overlaps a range already page-locked"):
        pinned.register_host(memoryview(buf)[128:256])
    region.unregister()
    assert drv.lib.fake_registered() == 1 and region.registered
    region.unregister()
    region.unregister()  # idempotent after the last reference
    assert drv.lib.fake_registered() == 0 and not region.registered
    assert not pinned.is_pinned(arr)
    with pytest.raises(ValueError, match="zero-size"):
        pinned.register_host(bytearray(0))
    assert drv.lib.fake_registered() == 0


class _T:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


def test_export_and_open_through_the_real_binding(drv, monkeypatch):
    monkeypatch.setattr(ipc, "describe", lambda t: DeviceTensorInfo("torch", t.ptr, (16,), (1,), "float32", 4, 1))
    monkeypatch.setattr(ipc, "current_stream", lambda kind, device: 0x5000 + device)
    monkeypatch.setattr(ipc, "from_pointer", lambda kind, ptr, shape, strides, dtype, device, owner: (ptr, owner))
    base = drv.lib.fake_alloc(1 << 16)
    d = ipc.export_handle(_T(base + 256))
    assert d["offset"] == 256 and d["device"] == 1
    assert ipc.DeviceHandle.from_dict(d).device_uuid == b"B" * 16
    assert drv.lib.fake_current_ctx() == 0x1001
    # The same descriptor as another live process would send it: a real IPC open.
    d_foreign = dict(d, pid=os.getppid(), sender=os.getppid())
    ptr, guard = ipc.open_handle(d_foreign)
    assert ptr == base + 256
    assert drv.lib.fake_last_wait_stream() == 0x5001
    del guard
    gc.collect()
    assert ipc.collect_releases() == []  # marker not done in the fake until we say so
    assert ipc.stats()["pending_releases"] == 1
    st = ipc._state()
    for _item, (_device, marker) in list(st.pending._items):
        drv.lib.fake_event_set_done(marker)
    assert ipc.collect_releases() == [(os.getppid(), d["token"])]
    assert ipc.release(d["token"])
    ipc._state().imports.close_all()


def test_pin_arena_of_registers_the_whole_mapping_once(drv):
    import mmap

    with mmap.mmap(-1, 1 << 16) as m:
        arena = np.frombuffer(memoryview(m), dtype=np.float32)
        a = pinned.pin_arena_of(arena[64:128].reshape(8, 8))
        b = pinned.pin_arena_of(arena[1024:2048])
        assert a is b and a.size == 1 << 16 and drv.lib.fake_registered() == 1
        assert pinned.pin_arena_of(np.zeros(8, dtype=np.float32)) is None
        a.unregister()
        assert drv.lib.fake_registered() == 0
        del arena  # no export held by the region: the mapping closes normally


def test_pin_arena_of_reuses_a_registered_sub_range_of_the_mapping(drv):
    # A GPU worker page-locks only the request arena of a channel's segment (a slice of the
    # mapping); a method calling pin_arena_of on a batch view in it must get that region,
    # not try to lock the whole mapping over it (CUDA refuses overlapping registrations).
    import mmap

    with mmap.mmap(-1, 1 << 16) as m:
        arena_part = memoryview(m)[4096: 4096 + 8192]
        region = pinned.register_host(arena_part, keep_export=False)
        arena = np.frombuffer(memoryview(m), dtype=np.float32)
        view = arena[1024 + 16: 1024 + 80].reshape(8, 8)  # bytes 4160..4416: inside the pinned part
        assert pinned.pin_arena_of(view) is region
        assert drv.lib.fake_registered() == 1
        region.unregister()
        assert drv.lib.fake_registered() == 0
        del arena, view, arena_part
