"""GPU host integration: CUDA tensors by IPC handle, pinned arenas, device-side batching.

Importing this package imports neither torch nor CuPy nor libcuda; each
function loads what it needs on first use and raises `GpuUnavailable`
(naming the missing piece: driver, device, CuPy, CUDA build of torch) when
the host cannot provide it.

Transport integration points (what the shared-memory transport calls)
----------------------------------------------------------------------

Client, sending a call::

    if is_device_tensor(arg):
        d = export_handle(arg, consumer_pid=worker_pid)   # JSON-able dict; put it in the
                                                          # descriptor's non-tensor args
    # d["token"] is kept with the request

Runner worker, receiving a batch::

    tensors = [open_handle(d) for d in handle_dicts]      # is_handle_dict(d) spots them
    batch = coalesce(tensors, dim=input_dim)              # one device tensor (kernel or cat)
    out = method(batch.tensor)
    parts = batch.split(out, dim=output_dim)              # per-caller views, no copy
    replies = [export_handle(p, consumer_pid=caller_pid) for p in parts]
    del tensors, batch                                    # views of the inputs die here

Client, receiving the result::

    result = open_handle(reply)            # or open_handle(reply, copy=True)
    release(token) for its input tokens    # AFTER opening the result (a runner
                                           # may hand back a view of an input)

Both sides, regularly (each call or each completion pass)::

    for sender_pid, token in collect_releases():
        send "release token" to sender_pid, which calls release(token)
    sweep()                                # when a peer process died

CPU tensors headed for a GPU model: the runner page-locks each arena once
with `register_host(arena_buffer)` and moves batch views with
`to_device(view, device)`; it unregisters before unmapping.

Rules the transport must keep: spawn (never fork) processes once CUDA is
initialised; release input tokens only after opening the results; a token is
released to the process that sent the descriptor (`d["sender"]`).
"""
from __future__ import annotations

from .batch import DeviceBatch, coalesce, split
from .driver import CudaError, GpuUnavailable, available
from .handles import DeviceHandle, is_handle_dict
from .ipc import claim, collect_releases, export_handle, is_device_tensor, open_handle, release, stats, sweep
from .pinned import PinnedRegion, is_pinned, pin_arena_of, register_host, root_buffer, to_device, unregister

__all__ = [
    "CudaError",
    "DeviceBatch",
    "DeviceHandle",
    "GpuUnavailable",
    "PinnedRegion",
    "available",
    "claim",
    "coalesce",
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
    "split",
    "stats",
    "sweep",
    "to_device",
    "unregister",
]
