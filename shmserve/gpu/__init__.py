"""GPU host integration: CUDA tensors by IPC handle, and pinned arenas.

Importing this package imports neither torch nor CuPy nor libcuda; each
function loads what it needs on first use and raises `GpuUnavailable`
(naming the missing piece: driver, device, CuPy, CUDA build of torch) when
the host cannot provide it.

Transport integration points (what the shared-memory transport calls)
----------------------------------------------------------------------

One `HandoffLedger` per process does the protocol; per message::

    # client sending a call / worker sending results
    args = ledger.encode(args, peer_pid)           # device tensors -> JSON-able handle dicts
    meta["releases"] = ledger.owed_to(peer_pid)    # peer's tokens we are done with

    # worker receiving a call / client receiving results
    ledger.take_back(meta["releases"])             # release our tensors the peer is done with
    args = ledger.decode(args)                     # handle dicts -> tensors, no copy

    sweep(); ledger.forget(pid)                    # when a peer process died

Underneath: `export_handle` / `open_handle` / `release` / `collect_releases`
(see `shmserve.gpu.ipc`). A peer that sends nothing for a while still gets
its releases if the transport sends `owed_to(pid)` on an idle timer.

CPU tensors headed for a GPU model: the runner page-locks each arena once
with `register_host(arena_buffer)` and moves batch views with
`to_device(view, device)`; it unregisters before unmapping.

Which tensors are device tensors, and their dtypes, is `shmserve.tensors`
(`kind_of`, `CUDA_IPC_DTYPES`). Device-side batching (`shmserve.gpu.batch`:
a gather kernel or the framework's cat) is not on the serving path: calls that
carry CUDA tensors are not batched; ``perf/gpu_bench.py`` measures it.

Rules the transport must keep: spawn (never fork) processes once CUDA is
initialised; a token is released to the process that sent the descriptor
(`d["sender"]`), which `HandoffLedger` does for you.
"""
from __future__ import annotations

from .driver import CudaError, GpuUnavailable, available
from .handles import DeviceHandle, is_handle_dict
from .ipc import claim, collect_releases, export_handle, is_device_tensor, open_handle, release, stats, sweep
from .ledger import HandoffLedger
from .pinned import PinnedRegion, is_pinned, pin_arena_of, register_host, root_buffer, to_device, unregister

__all__ = [
    "CudaError",
    "DeviceHandle",
    "GpuUnavailable",
    "HandoffLedger",
    "PinnedRegion",
    "available",
    "claim",
    "collect_releases",
    "export_handle",
    "is_device_tensor",
    "is_handle_dict",
    "is_pinned",
    "open_handle",
    "pin_arena_of",
    "register_host",
    "release",
    "root_buffer",
    "stats",
    "sweep",
    "to_device",
    "unregister",
]
