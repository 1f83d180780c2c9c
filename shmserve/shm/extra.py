"""Extra segments: a call's input read in place from a client's shared-memory object.

The system shared-memory extension (`shmserve.oip.regions`) maps objects that
a client on this host registered. An input viewed in such a mapping need not
be copied into the request arena: the runner worker runs as the same uid and
can map the same object by name. So:

- the API worker's `RegionTable` adds each mapping it holds to `EXTERNAL`
  (`ExternalObjects`) and removes it when it drops the region;
- when a call's tensor lies wholly in one of them (`ExternalObjects.locate`),
  the link announces the object in an entry of its channel's header page
  (`LinkSlots.announce`: generation, size, name, declared in `shm.wire` as
  `EXTRA`) before publishing, and the tensor header names the entry
  (``segment`` = entry + 1) and the offset in the object; the arena holds
  nothing for it;
- the worker (`ExtraMappings.view`) reads the entry, maps the object after the
  same trust checks as the API worker (regular file in /dev/shm, opened
  without following links, owned by its uid, not world-writable, at least the
  announced size), and bounds-checks the tensor against both the entry and its
  own mapping: it never trusts the descriptor alone.

The entry is written before the head word and the doorbell post, so the
worker sees it with the call (the same ordering as the descriptor). An entry
whose object was unregistered is cleared by the link at its next call; a call
still in flight then fails with a clear error (or, if the worker mapped the
object already, reads it from its own mapping, which stays valid until it is
closed). The worker drops a mapping when the entry it came from changes and
when the channel closes.

Outputs go the other way. A caller that wants a call's result in a region
sets `OUTPUT_TO` (the destination bytes, in a registered mapping) around the
call; the link then announces the object like an input's and writes an
`OUT_DEST` entry (seq, entry, generation, offset, capacity) of the channel's
header page before publishing (`place_output`). When the worker's result is
one ndarray that fits the capacity, it writes it into its own mapping of the
object (`ExtraMappings.output_view`: the same checks as an input's) and its
response's tensor header names the entry and offset, with no arena block; the
client rebuilds the result as a view of its own mapping (`results_in_place`),
so nothing is copied on the way back. Any other result (a tuple, too large, an
entry gone) is answered through the arena as before, and the caller copies it.
"""
from __future__ import annotations

import contextvars
import itertools
import math
import mmap
import os
import stat
import struct
import threading
from typing import Any

import numpy as np

from ..tensors import KIND_NUMPY, numpy_dtype
from .wire import EXTRA, EXTRA_OFF, EXTRA_SLOTS, HEADER_SIZE, U64, Tensor, TensorMeta, record_fields

__all__ = ["EXTERNAL", "ExternalObjects", "LinkSlots", "ExtraMappings", "offsets_in_place", "open_object", "SHM_DIR",
           "OUTPUT_TO", "place_output", "release_output", "output_dest", "results_in_place"]

# An output destination in the channel's header page, after the extra-segment entries: the call whose result
# goes straight into a client object, the extra-segment entry (1-based) and generation naming the object, the
# offset there and the bytes the result may take. Only the link writes them and their mask (bit i: entry i is
# in use); the worker only reads. No C reads them.
OUT_DEST = struct.Struct("<QBxxxIQQ")
OUT_DEST_FIELDS = record_fields(OUT_DEST.format, ("seq", "segment", "generation", "offset", "capacity"))
OUT_MASK_OFF = EXTRA_OFF + EXTRA_SLOTS * EXTRA.size
OUT_DEST_OFF, OUT_DEST_SLOTS = OUT_MASK_OFF + 64, 32
assert OUT_DEST.size == 32 and OUT_DEST_OFF + OUT_DEST_SLOTS * OUT_DEST.size <= HEADER_SIZE

#: the bytes (a uint8 ndarray in a registered mapping) the result of the calls made in this context
#: should be written to by the worker; None: into the arena, as every call
OUTPUT_TO: contextvars.ContextVar[np.ndarray | None] = contextvars.ContextVar("shmserve_output_to", default=None)

SHM_DIR = "/dev/shm"
_NAME_MAX = EXTRA.size - 16  # the entry's name field
_GEN_MASK = 0xFFFFFFFF  # a tensor header carries the generation's low 32 bits


def open_object(name: str, min_size: int) -> mmap.mmap:
    """Map the shared-memory object `name` read-write; ValueError unless it passes the trust checks."""
    path = os.path.join(SHM_DIR, name.lstrip("/"))
    if "/" in name.lstrip("/") or not name.strip("/"):
        raise ValueError(f"{name!r} is not a shared-memory object name")
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
            raise ValueError(f"shared-memory object {name!r} is not a regular object of this uid with mode 0600")
        if st.st_size < min_size or st.st_size == 0:
            raise ValueError(f"shared-memory object {name!r} holds {st.st_size} bytes, fewer than the {min_size} announced")
        return mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _address(buf: Any) -> int:
    arr = np.frombuffer(buf, np.uint8)
    try:
        return int(arr.ctypes.data)
    finally:
        del arr  # the export must not outlive this call: the owner closes the mapping later


class ExternalObjects:
    """The client-side table of mapped objects whose bytes a call may reference in place."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # generation -> (start address, end address, object name, object size)
        self._objects: dict[int, tuple[int, int, str, int]] = {}
        self._mappings: dict[int, Any] = {}
        self.version = 0  # bumped on every removal: links then clear their dead entries
        #: whether any object is registered (the per-call lookup runs only then): an attribute, read per call
        self.active = False

    def add(self, mapping: Any, name: str) -> int:
        """Register the mapping of object `name` (the whole object); its generation."""
        if len(name.encode()) > _NAME_MAX:
            return 0  # cannot be announced: its inputs are copied as before
        start, size = _address(mapping), len(mapping)
        with self._lock:
            gen = next(self._ids)
            self._objects[gen] = (start, start + size, name, size)
            self._mappings[gen] = mapping
            self.active = True
        return gen

    def view(self, gen: int, t: TensorMeta) -> np.ndarray:
        """Result tensor `t` as the worker wrote it into object `gen`, viewed in this process's mapping."""
        mapping = self._mappings.get(gen)
        dtype = numpy_dtype(t.dtype)
        if mapping is None or t.offset + t.nbytes > len(mapping) or t.nbytes != math.prod(t.shape) * dtype.itemsize:
            raise ValueError("a result written into a shared-memory region lies outside it, or the region was "
                             "unregistered meanwhile")
        return np.ndarray(t.shape, dtype, mapping, t.offset)

    def remove(self, gen: int) -> None:
        """Forget generation `gen` (before its mapping is closed)."""
        with self._lock:
            self._mappings.pop(gen, None)
            if self._objects.pop(gen, None) is not None:
                self.version += 1
            self.active = bool(self._objects)

    def alive(self, gen: int) -> bool:
        return gen in self._objects

    def locate(self, arr: np.ndarray, dtype_str: str) -> tuple[int, str, int, int] | None:
        """(generation, name, size, offset) of the object `arr` lies in, or None (then it is copied)."""
        if not arr.flags.c_contiguous or arr.dtype != numpy_dtype(dtype_str) or not arr.nbytes:
            return None
        ptr = arr.__array_interface__["data"][0]
        end = ptr + arr.nbytes
        for gen, (start, stop, name, size) in list(self._objects.items()):
            if start <= ptr and end <= stop:
                return gen, name, size, ptr - start
        return None


    def locate_all(self, tensors: list[Tensor]) -> list[tuple[int, str, int, int] | None] | None:
        """`locate` for each tensor of a call; None when none lies in a registered object."""
        found = [self.locate(arr, dtype_str) if kind == KIND_NUMPY else None for arr, kind, dtype_str in tensors]
        return found if any(f is not None for f in found) else None


#: the process's table; empty (and costing a call nothing) until a `RegionTable` maps a region
EXTERNAL = ExternalObjects()


class LinkSlots:
    """A link's entries of its channel's extra-segment table (the client writes them)."""

    def __init__(self, header: memoryview) -> None:
        self.header = header
        self.gens = [0] * EXTRA_SLOTS
        self.version = 0
        self.outs: dict[int, int] = {}  # seq -> its OUT_DEST entry, while the call is in flight

    def release_output(self, seq: int) -> None:
        """Call `seq` was answered: free its output destination entry, if it had one."""
        i = self.outs.pop(seq, None)
        if i is not None:
            mask = U64.unpack_from(self.header, OUT_MASK_OFF)[0]
            U64.pack_into(self.header, OUT_MASK_OFF, mask & ~(1 << i))

    def announce(self, gen: int, name: str, size: int) -> int:
        """The entry (1-based) naming generation `gen`, written now if new; 0 when all are taken.

        An entry cleared for an unregistered object may be reused for another at once: a call still
        in flight names the old generation in its tensor header, so the worker refuses it rather
        than read the new object."""
        if self.version != EXTERNAL.version:
            self._clear_dead()
        try:
            return self.gens.index(gen) + 1
        except ValueError:
            pass
        try:
            k = self.gens.index(0)
        except ValueError:
            return 0
        EXTRA.pack_into(self.header, EXTRA_OFF + k * EXTRA.size, gen, size, name.encode())
        self.gens[k] = gen
        return k + 1

    def announce_all(self, found: list[tuple[int, str, int, int] | None]) -> list[tuple[int, int]] | None:
        """Each tensor's (entry, generation) ((0, 0): in the arena) for `ExternalObjects.locate_all`'s
        answer; None when an object finds no free entry (the call is then copied whole)."""
        out = []
        for f in found:
            if f is None:
                out.append((0, 0))
                continue
            k = self.announce(f[0], f[1], f[2])
            if not k:
                return None
            out.append((k, f[0] & _GEN_MASK))
        return out

    def _clear_dead(self) -> None:
        self.version = EXTERNAL.version
        for k, gen in enumerate(self.gens):
            if gen and not EXTERNAL.alive(gen):
                EXTRA.pack_into(self.header, EXTRA_OFF + k * EXTRA.size, 0, 0, b"")
                self.gens[k] = 0


def place_output(slots: "LinkSlots | None", header: memoryview, seq: int) -> "LinkSlots":
    """Write call `seq`'s `OUTPUT_TO` destination into a free `OUT_DEST` entry, if its bytes lie in a
    registered object and an entry is free; the link's `LinkSlots` (made now if `slots` is None).
    Without an entry the result comes through the arena. The link frees the entry when the call's
    response arrives (`LinkSlots.release_output`); only the link writes the entries and their mask."""
    if slots is None:
        slots = LinkSlots(header)
    dest = OUTPUT_TO.get()
    found = EXTERNAL.locate(dest, "|u1") if dest is not None and EXTERNAL.active else None
    if dest is None or found is None or len(slots.outs) >= OUT_DEST_SLOTS:
        return slots
    k = slots.announce(found[0], found[1], found[2])
    if not k:
        return slots
    mask = U64.unpack_from(header, OUT_MASK_OFF)[0]
    i = (~mask & -~mask).bit_length() - 1  # the lowest free entry
    OUT_DEST.pack_into(header, OUT_DEST_OFF + i * OUT_DEST.size, seq, k, found[0] & _GEN_MASK, found[3], dest.nbytes)
    U64.pack_into(header, OUT_MASK_OFF, mask | 1 << i)  # after the entry: the worker reads the mask first
    slots.outs[seq] = i
    return slots


def release_output(slots: "LinkSlots | None", seq: int) -> None:
    """`LinkSlots.release_output`, when the link has entries at all."""
    if slots is not None:
        slots.release_output(seq)


def output_dest(header: memoryview, seq: int) -> tuple[int, int, int, int] | None:
    """The worker's look-up: (entry, generation, offset, capacity) of call `seq`'s destination, or None."""
    mask = U64.unpack_from(header, OUT_MASK_OFF)[0]
    while mask:
        i = (mask & -mask).bit_length() - 1
        mask &= mask - 1
        got_seq, k, gen, offset, capacity = OUT_DEST.unpack_from(header, OUT_DEST_OFF + i * OUT_DEST.size)
        if got_seq == seq:
            return k, gen, offset, capacity
    return None


def results_in_place(slots: "LinkSlots | None", tmetas: list[TensorMeta]) -> list[np.ndarray]:
    """The client's side: each result tensor the worker wrote into an object its link announced,
    viewed in this process's mapping; ValueError when the entry no longer names a live object."""
    out = []
    for t in tmetas:
        gen = slots.gens[t.segment - 1] if slots is not None and 0 < t.segment <= EXTRA_SLOTS else 0
        if not gen or gen & _GEN_MASK != t.generation:
            raise ValueError("the shared-memory region of the result was unregistered before the call ended")
        out.append(EXTERNAL.view(gen, t))
    return out


def offsets_in_place(found: list[tuple[int, str, int, int] | None], segments: list[tuple[int, int]],
                     local_offsets: list[int]) -> list[int]:
    """Every tensor's header offset: its offset in its object, or (in order) its arena offset."""
    rest = iter(local_offsets)
    return [f[3] if seg[0] and f is not None else next(rest) for f, seg in zip(found, segments)]


class ExtraMappings:
    """The worker's mappings of the objects a channel announced, checked on every use."""

    def __init__(self) -> None:
        self._maps: dict[int, tuple[int, str, mmap.mmap]] = {}  # entry -> (generation, name, mapping)
        self._retired: list[mmap.mmap] = []

    def view(self, header: memoryview, t: TensorMeta) -> np.ndarray:
        """The input `t` (its ``segment`` nonzero) viewed in the announced object; ValueError when
        the entry is empty or the tensor falls outside the entry or the mapping."""
        k = t.segment - 1
        if not 0 <= k < EXTRA_SLOTS:
            raise ValueError(f"tensor names extra segment {t.segment}, but a channel has {EXTRA_SLOTS}")
        gen, size, raw = EXTRA.unpack_from(header, EXTRA_OFF + k * EXTRA.size)
        if not gen or gen & _GEN_MASK != t.generation:
            raise ValueError("the shared-memory region of an input was unregistered before the call ran")
        name = raw.rstrip(b"\0").decode("utf-8", "replace")
        cached = self._maps.get(k)
        if cached is None or cached[0] != gen or cached[1] != name:
            if cached is not None:
                self._retire(cached[2])
            mapping = open_object(name, size)
            cached = self._maps[k] = (gen, name, mapping)
        mapping = cached[2]
        dtype = numpy_dtype(t.dtype)
        if t.nbytes != math.prod(t.shape) * dtype.itemsize:
            raise ValueError(f"tensor of shape {t.shape} and dtype {t.dtype} cannot be {t.nbytes} bytes")
        if t.offset + t.nbytes > min(size, len(mapping)):
            raise ValueError(f"tensor at offset {t.offset} of {t.nbytes} bytes falls outside shared-memory "
                             f"object {name!r} ({min(size, len(mapping))} bytes)")
        return np.ndarray(t.shape, dtype, mapping, t.offset)

    def output_view(self, header: memoryview, dest: tuple[int, int, int, int], arr: np.ndarray,
                    dtype_str: str) -> np.ndarray | None:
        """Where result `arr` goes in destination `dest` (`output_dest`), checked like an input; None
        when it does not fit the capacity (the result then travels through the arena)."""
        k, gen, offset, capacity = dest
        if arr.nbytes > capacity or not arr.nbytes:
            return None
        t = TensorMeta(offset, arr.nbytes, dtype_str, tuple(arr.shape), KIND_NUMPY, k, gen)
        return self.view(header, t)

    def _retire(self, mapping: mmap.mmap) -> None:
        self._retired.append(mapping)
        self.sweep()

    def sweep(self) -> None:
        """Close the retired mappings no array views any more."""
        still = []
        for m in self._retired:
            try:
                m.close()
            except BufferError:  # a call's arrays still view it
                still.append(m)
        self._retired = still

    def close(self) -> None:
        """Drop every mapping (the channel closed); one still viewed closes at the next sweep or exit."""
        for _gen, _name, m in self._maps.values():
            self._retired.append(m)
        self._maps.clear()
        self.sweep()
