"""The IPC hand-off flow (export, open, release, sweep) against a fake CUDA driver.

The fake enforces the CUDA rules the design depends on (a handle may be open
once per process; an event is waited on before use) so these tests check
shmserve's bookkeeping without a GPU. The real driver calls are covered by the
`gpu`-marked tests and perf/gpu_bench.py on a GPU host.
"""
from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass
from typing import Any

import pytest

from shmserve.gpu import driver as driver_mod
from shmserve.gpu import ipc
from shmserve.gpu.driver import CudaError, GpuUnavailable
from shmserve.gpu.frameworks import DeviceTensorInfo

DEAD_PID = 2**22 + 1  # above Linux's PID_MAX_LIMIT: never a live process
UUID = b"G" * 16
STREAM = 7


class FakeDriver:
    def __init__(self) -> None:
        self.allocs = {0x7000_0000: 1 << 20, 0x9000_0000: 1 << 20}
        self.not_ipc_capable: set[int] = set()
        self.mapped: dict[bytes, int] = {}
        self.opens = 0
        self.events: dict[int, dict[str, Any]] = {}
        self.opened_events: dict[bytes, int] = {}
        self.waits: list[tuple[int, int]] = []
        self.records: list[tuple[int, int]] = []
        self._next = 1

    def ensure_context(self, device: int) -> None:
        assert device == 0

    def device_count(self) -> int:
        return 1

    def device_uuid(self, device: int) -> bytes:
        return UUID

    def address_range(self, ptr: int) -> tuple[int, int]:
        for base, size in self.allocs.items():
            if base <= ptr < base + size:
                return base, size
        raise CudaError("not device memory", 1, "CUDA_ERROR_INVALID_VALUE")

    def ipc_mem_handle(self, base: int) -> bytes:
        if base in self.not_ipc_capable:
            raise CudaError("vmm", 1, "CUDA_ERROR_INVALID_VALUE")
        return base.to_bytes(8, "little") * 8

    def ipc_open_mem(self, handle: bytes) -> int:
        if handle in self.mapped:
            raise CudaError("second open of one handle in one process", 208, "CUDA_ERROR_ALREADY_MAPPED")
        self.opens += 1
        self.mapped[handle] = 0x1_0000_0000 * self.opens
        return self.mapped[handle]

    def ipc_close_mem(self, base: int) -> None:
        handle = next(h for h, b in self.mapped.items() if b == base)
        del self.mapped[handle]

    def _new_event(self, interprocess: bool) -> int:
        ev = self._next
        self._next += 1
        self.events[ev] = {"ipc": interprocess, "done": False}
        return ev

    def event_create(self) -> int:
        return self._new_event(False)

    def event_create_interprocess(self) -> int:
        return self._new_event(True)

    def ipc_event_handle(self, event: int) -> bytes:
        assert self.events[event]["ipc"]
        return event.to_bytes(4, "little") * 16

    def ipc_open_event(self, handle: bytes) -> int:
        assert handle not in self.opened_events, "event handle opened twice"
        ev = self._new_event(True)
        self.opened_events[handle] = ev
        return ev

    def event_record(self, event: int, stream: int) -> None:
        self.records.append((event, stream))

    def event_done(self, event: int) -> bool:
        return bool(self.events[event]["done"])

    def event_destroy(self, event: int) -> None:
        del self.events[event]

    def stream_wait_event(self, stream: int, event: int) -> None:
        self.waits.append((stream, event))

    def finish_all(self) -> None:
        for ev in self.events.values():
            ev["done"] = True


@dataclass(eq=False)
class FakeTensor:
    ptr: int
    shape: tuple[int, ...] = (4, 8)
    strides: tuple[int, ...] = (8, 1)


@dataclass(eq=False)
class FakeView:
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    owner: Any


@pytest.fixture
def fake(monkeypatch):
    drv = FakeDriver()
    monkeypatch.setattr(driver_mod, "load", lambda: drv)
    monkeypatch.setattr(
        ipc, "describe", lambda t: DeviceTensorInfo("torch", t.ptr, t.shape, t.strides, "float32", 4, 0)
    )
    monkeypatch.setattr(ipc, "current_stream", lambda kind, device: STREAM)
    monkeypatch.setattr(
        ipc, "from_pointer", lambda kind, ptr, shape, strides, dtype, device, owner: FakeView(ptr, shape, strides, owner)
    )
    ipc._STATES.clear()
    yield drv
    ipc._STATES.clear()


def foreign_handle(drv: FakeDriver, token: int = 5, pid: int | None = None, offset: int = 1024) -> dict[str, Any]:
    """A descriptor as another (live) process would send it."""
    pid = os.getppid() if pid is None else pid
    return ipc.DeviceHandle(
        kind="torch", pid=pid, sender=pid, token=token, device=3, device_uuid=UUID,
        mem_handle=b"F" * 64, alloc_size=1 << 20, offset=offset, shape=(4, 8), strides=(8, 1),
        dtype="float32", event_handle=b"e" * 64,
    ).to_dict()


def test_export_names_the_allocation_base_and_keeps_the_tensor_alive(fake):
    t = FakeTensor(0x7000_0000 + 4096)
    d = ipc.export_handle(t, consumer_pid=os.getppid())
    assert d["offset"] == 4096 and d["alloc_size"] == 1 << 20
    assert d["pid"] == d["sender"] == os.getpid()
    assert ipc.DeviceHandle.from_dict(d).mem_handle == fake.ipc_mem_handle(0x7000_0000)
    event = next(iter(e for e, info in fake.events.items() if info["ipc"]))
    assert fake.records == [(event, STREAM)]
    ref = weakref.ref(t)
    del t
    gc.collect()
    assert ref() is not None, "the producer must keep an exported tensor alive"
    assert ipc.stats()["exports"] == 1
    assert ipc.release(d["token"]) is True
    assert ipc.release(d["token"]) is False
    gc.collect()
    assert ref() is None and ipc.stats()["exports"] == 0


def test_released_events_are_pooled_and_reused(fake):
    d1 = ipc.export_handle(FakeTensor(0x7000_0000))
    ipc.release(d1["token"])
    d2 = ipc.export_handle(FakeTensor(0x9000_0000))
    assert d2["event_handle"] == d1["event_handle"]
    d3 = ipc.export_handle(FakeTensor(0x9000_0010))  # d2 still out: a new event
    assert d3["event_handle"] != d2["event_handle"]
    assert len(fake.records) == 3  # recorded at every export, pooled or not


def test_memory_that_cannot_be_exported_gets_an_actionable_error(fake):
    fake.not_ipc_capable.add(0x9000_0000)
    with pytest.raises(GpuUnavailable, match="expandable_segments"):
        ipc.export_handle(FakeTensor(0x9000_0100))
    assert ipc.stats()["exports"] == 0


def test_open_maps_each_producer_allocation_once_and_waits_on_its_event(fake):
    d = foreign_handle(fake)
    v1 = ipc.open_handle(d)
    v2 = ipc.open_handle(foreign_handle(fake, token=6, offset=2048))
    assert fake.opens == 1, "a handle may be opened only once per process"
    base = fake.mapped[b"F" * 64]
    assert (v1.ptr, v2.ptr) == (base + 1024, base + 2048)
    opened_event = fake.opened_events[b"e" * 64]
    assert fake.waits == [(STREAM, opened_event), (STREAM, opened_event)]
    assert ipc.stats()["imports"] == 1


def test_a_dead_view_is_released_only_after_its_queued_work(fake):
    view = ipc.open_handle(foreign_handle(fake, token=9))
    assert ipc.collect_releases() == []
    del view
    gc.collect()
    assert ipc.stats()["pending_releases"] == 1
    assert ipc.collect_releases() == [], "the marker event has not completed yet"
    fake.finish_all()
    assert ipc.collect_releases() == [(os.getppid(), 9)]
    assert ipc.stats()["pending_releases"] == 0
    # Idle mappings stay open for reuse (bounded), so a second call maps nothing new.
    again = ipc.open_handle(foreign_handle(fake, token=10))
    assert fake.opens == 1 and again.ptr == fake.mapped[b"F" * 64] + 1024


def test_returning_a_view_of_an_input_names_the_original_owner(fake):
    view = ipc.open_handle(foreign_handle(fake, token=3))
    back = ipc.export_handle(FakeTensor(view.ptr + 64))
    assert back["pid"] == os.getppid(), "CUDA cannot re-export a mapping; the owner's handle goes back"
    assert back["sender"] == os.getpid()
    assert back["offset"] == 1024 + 64
    assert back["mem_handle"] == foreign_handle(fake)["mem_handle"]


def test_own_memory_handed_back_is_viewed_without_an_ipc_open(fake):
    t = FakeTensor(0x7000_0000 + 512)
    d = ipc.export_handle(t)
    view = ipc.open_handle(d)
    assert fake.opens == 0
    assert view.ptr == t.ptr and view.owner is t
    fake.finish_all()
    assert ipc.collect_releases() == []  # our own token: released here, not sent
    assert ipc.stats()["exports"] == 0
    assert view.owner is t  # the view alone keeps the tensor alive now


def test_own_memory_coming_back_is_held_by_the_tensor_it_lies_in(fake):
    a = FakeTensor(0x7000_0000)  # 4x8 float32 = 128 bytes each, one caching-allocator block
    b = FakeTensor(0x7000_0000 + 128)
    ipc.export_handle(a)
    db = ipc.export_handle(b)
    view = ipc.open_handle(db)
    assert view.owner is b, "the view must keep alive the tensor it points into"
    straddling = dict(db, offset=64)  # half in a, half in b: no single export covers it
    with pytest.raises(RuntimeError, match="no longer exports"):
        ipc.open_handle(straddling)


def test_own_memory_released_too_early_is_reported(fake):
    d = ipc.export_handle(FakeTensor(0x7000_0000))
    ipc.release(d["token"])
    with pytest.raises(RuntimeError, match="after opening the results"):
        ipc.open_handle(d)


def test_sweep_drops_exports_of_dead_consumers_and_mappings_of_dead_producers(fake):
    alive = ipc.export_handle(FakeTensor(0x7000_0000), consumer_pid=os.getppid())
    ipc.export_handle(FakeTensor(0x7000_0100), consumer_pid=DEAD_PID)
    late = ipc.export_handle(FakeTensor(0x7000_0200))
    ipc.claim(late["token"], DEAD_PID)
    view = ipc.open_handle(foreign_handle(fake, pid=DEAD_PID))
    assert ipc.sweep() == 2
    assert ipc.stats()["exports"] == 1 and ipc.release(alive["token"])
    assert ipc.stats()["imports"] == 1, "a mapping with a live view stays"
    del view
    gc.collect()
    fake.finish_all()
    assert ipc.collect_releases() == [(DEAD_PID, 5)]
    ipc.sweep()
    assert ipc.stats()["imports"] == 0 and fake.mapped == {}
    assert b"e" * 64 not in {h for h, ev in fake.opened_events.items() if ev in fake.events}


def test_a_gpu_this_process_cannot_see_is_named(fake):
    d = foreign_handle(fake)
    d["device_uuid"] = ipc.DeviceHandle.from_dict(d).to_dict()["device_uuid"].replace("R", "S")
    with pytest.raises(GpuUnavailable, match="cannot see"):
        ipc.open_handle(d)


def test_empty_tensors_are_refused_with_advice(fake):
    with pytest.raises(ValueError, match="empty CUDA tensor"):
        ipc.export_handle(FakeTensor(0x7000_0000, shape=(0, 8)))


def test_ledger_walks_values_and_routes_releases(fake, monkeypatch):
    from shmserve.gpu.handles import is_handle_dict
    from shmserve.gpu.ledger import HandoffLedger

    monkeypatch.setattr(ipc, "is_device_tensor", lambda v: isinstance(v, FakeTensor))
    ledger = HandoffLedger()
    t1, t2 = FakeTensor(0x7000_0000), FakeTensor(0x9000_0000)
    payload = ledger.encode((t1, {"mask": t2, "k": 3}, [1, "x"]), peer_pid=os.getppid())
    assert is_handle_dict(payload[0]) and is_handle_dict(payload[1]["mask"])
    assert payload[1]["k"] == 3 and payload[2] == [1, "x"]
    assert ipc.stats()["exports"] == 2
    # A peer's results arrive: decoding opens them; dropping them makes tokens owed.
    incoming = [foreign_handle(fake, token=41), {"y": foreign_handle(fake, token=42, offset=4096)}]
    opened = ledger.decode(incoming)
    assert isinstance(opened[0], FakeView) and isinstance(opened[1]["y"], FakeView)
    assert ledger.owed_to(os.getppid()) == []
    del opened
    gc.collect()
    fake.finish_all()
    assert ledger.peers() == [os.getppid()]
    assert sorted(ledger.owed_to(os.getppid())) == [41, 42]
    assert ledger.owed_to(os.getppid()) == []
    ledger.take_back([payload[0]["token"], payload[1]["mask"]["token"]])
    assert ipc.stats()["exports"] == 0


def test_releases_reach_their_peer_whichever_ledger_collected_them(monkeypatch):
    # Each runner client has its own ledger, but released views are collected process-wide:
    # a token collected while another runner's client called must still go to its own worker.
    from shmserve.gpu.ledger import HandoffLedger

    worker_a, worker_b = 1001, 1002
    ready = [[(worker_a, 1), (worker_b, 2)]]
    monkeypatch.setattr(ipc, "collect_releases", lambda: ready.pop() if ready else [])
    client_a, client_b = HandoffLedger(), HandoffLedger()
    assert client_a.owed_to(worker_a) == [1]  # collects worker_b's token too
    assert client_b.peers() == [worker_b]
    assert client_b.owed_to(worker_b) == [2]
    assert client_a.owed_to(worker_b) == [] and client_b.owed_to(worker_a) == []
    client_a.forget(worker_b)
