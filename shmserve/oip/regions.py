"""The system shared-memory extension: client regions the server maps and reads/writes in place.

A client on this host creates a POSIX shared-memory object, registers a region
of it (``name``, ``key`` = the object's name, ``offset``, ``byte_size``), then
sends inference requests whose inputs and outputs name the region, an offset
and a byte size instead of carrying bytes. Inputs are viewed in the mapping and
read there in place by the runner worker, which maps the same object
(`shmserve.shm.extra`: every mapping here is added to its ``EXTERNAL`` table);
outputs are written straight into the region.

Trust model (the extension is off unless ``shmserve serve --allow-client-shm``):

- only objects in ``/dev/shm`` that belong to the server's uid and are not
  world-writable are mapped (opened without following symlinks);
- every reference is checked against the registered region, and the region
  against the object's size, so no request reads or writes outside it;
- a bad key, region or reference is an `InferError` 400 that says what is wrong.

With several API workers, a registration made through one must be seen by the
others: each registration is also a small record file in a folder the
supervisor owns (``directory``). A worker that meets an unknown name reads the
record and maps the object itself; before each use it checks the record still
exists (one ``stat``), so an unregister through any worker holds for all.

Mappings are closed on unregister (by a peer worker within about a second: each
worker holding mappings re-checks their records once a second) and by `close()`
when the server stops; one still in use by an in-flight request is closed as
soon as it is free.
"""
from __future__ import annotations

import asyncio
import mmap
import os
import re
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..shm.extra import EXTERNAL
from .errors import InferError

__all__ = ["Region", "RegionTable", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_KEY_RE = re.compile(r"^/?[A-Za-z0-9_.-]{1,250}$")
_NAME_MAX = 255


@dataclass
class Region:
    """One registered region and its mapping of the whole object."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    token: str = ""
    record_id: tuple[int, int] = (0, 0)  # (inode, mtime_ns) of the record file this was loaded from
    external: int = 0  # its generation in shm.extra.EXTERNAL (0: its inputs are copied)

    def as_status(self) -> dict[str, Any]:
        """The status entry of this region."""
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InferError(400, f"{what} must be an integer, got {value!r}")
    return value


def _open_object(key: str, offset: int, byte_size: int, name: str) -> mmap.mmap:
    """Map the shared-memory object `key` after the trust checks of the module docstring."""
    path = os.path.join(SHM_DIR, key.lstrip("/"))
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InferError(400, f"region {name!r}: no shared-memory object {key!r}; create it before registering") from None
    except OSError as exc:
        raise InferError(400, f"region {name!r}: cannot open shared-memory object {key!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InferError(400, f"region {name!r}: {key!r} is not a shared-memory object")
        if st.st_uid != os.geteuid():
            raise InferError(400, f"region {name!r}: shared-memory object {key!r} belongs to uid {st.st_uid}, not to "
                                  f"the server's uid {os.geteuid()}; only the server's own user may register regions")
        if st.st_mode & stat.S_IWOTH:
            raise InferError(400, f"region {name!r}: shared-memory object {key!r} is world-writable "
                                  f"(mode {stat.S_IMODE(st.st_mode):o}); create it with mode 0600")
        if offset + byte_size > st.st_size:
            raise InferError(400, f"region {name!r}: offset {offset} + byte_size {byte_size} is past the end of "
                                  f"{key!r} ({st.st_size} bytes)")
        return mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class RegionTable:
    """Registered regions of one API worker, shared with its peers through `directory` (optional)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._regions: dict[str, Region] = {}
        self._retired: list[mmap.mmap] = []  # unregistered while a request still used them
        self._lock = threading.Lock()  # gRPC and REST run on one loop, but closing may come from another thread
        self._timer: asyncio.TimerHandle | None = None

    # -- registration ----------------------------------------------------------------
    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        """Map and record a region; `InferError` 400 for a bad name, key or bounds."""
        if not isinstance(name, str) or not name or len(name) > _NAME_MAX:
            raise InferError(400, f"region name must be a non-empty string of at most {_NAME_MAX} characters")
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InferError(400, f"region {name!r}: key {key!r} must name a shared-memory object "
                                  "(letters, digits, '_', '.', '-', optionally after one '/')")
        offset = _int(offset, f"region {name!r}: offset")
        byte_size = _int(byte_size, f"region {name!r}: byte_size")
        if offset < 0 or byte_size <= 0:
            raise InferError(400, f"region {name!r}: offset must be >= 0 and byte_size > 0, got {offset} and {byte_size}")
        self._sync(name)
        if name in self._regions:
            raise InferError(400, f"region {name!r} is already registered; unregister it first")
        mapping = _open_object(key, offset, byte_size, name)
        region = Region(name, key, offset, byte_size, mapping, uuid.uuid4().hex)
        record = self._record_path(name)
        if record is not None:
            tmp = record.with_suffix(f".{region.token}.tmp")
            tmp.write_bytes(orjson.dumps({"name": name, "key": key, "offset": offset, "byte_size": byte_size,
                                          "token": region.token}))
            try:
                os.link(tmp, record)  # fails if a peer registered the name meanwhile
            except FileExistsError:
                mapping.close()
                raise InferError(400, f"region {name!r} is already registered; unregister it first") from None
            finally:
                tmp.unlink()
            region.record_id = self._stat_id(record) or (0, 0)
        self._add(region)
        self._close_retired()

    def unregister(self, name: str = "") -> None:
        """Forget and unmap region `name`, or every region when `name` is empty (unknown names are ignored)."""
        names = [name] if name else list(self._regions) + self._peer_names()
        for n in names:
            record = self._record_path(n)
            if record is not None:
                try:
                    record.unlink()
                except FileNotFoundError:
                    pass
            self._drop(n)
        self._close_retired()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Status entries of region `name` (`InferError` 400 if unknown), or of every region."""
        if name:
            return [self._get(name).as_status()]
        for n in self._peer_names():
            self._sync(n)
        return [r.as_status() for r in list(self._regions.values())]

    # -- use by requests -----------------------------------------------------------------
    def view(self, name: str, offset: int, byte_size: int, what: str) -> memoryview:
        """The bytes ``[offset, offset + byte_size)`` of region `name`, bounds-checked; no copy."""
        region = self._get(name, what)
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InferError(400, f"{what}: offset {offset} and byte size {byte_size} fall outside region {name!r} "
                                  f"({region.byte_size} bytes)")
        start = region.offset + offset
        return memoryview(region.mapping)[start:start + byte_size]

    def write(self, ref: tuple[str, int, int], arr: np.ndarray, what: str) -> int:
        """Copy `arr` into the region reference ``(name, offset, byte_size)``; the bytes written."""
        name, offset, byte_size = ref
        if arr.nbytes > byte_size:
            raise InferError(400, f"{what} needs {arr.nbytes} bytes but its region {name!r} reference holds {byte_size}")
        dest = np.frombuffer(self.view(name, offset, arr.nbytes, what), arr.dtype.newbyteorder("<"), arr.size)
        if arr.ctypes.data == dest.ctypes.data and arr.flags.c_contiguous and arr.dtype == dest.dtype:
            return arr.nbytes  # the runner worker wrote it here already (shmserve.shm.extra: OUTPUT_TO)
        dest.reshape(arr.shape)[...] = arr
        return arr.nbytes

    def close(self) -> None:
        """Unmap every region of this worker (the records stay for peers; the supervisor removes the folder)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for n in list(self._regions):
            self._drop(n)
        import gc

        gc.collect()  # arrays of finished requests may still hold views
        self._close_retired()

    # -- internals -----------------------------------------------------------------------
    def _get(self, name: str, what: str = "") -> Region:
        self._sync(name)
        region = self._regions.get(name)
        if region is None:
            prefix = f"{what}: " if what else ""
            raise InferError(400, f"{prefix}no shared-memory region named {name!r} is registered; register it first "
                                  "(POST /v2/systemsharedmemory/region/{name}/register)")
        return region

    def _record_path(self, name: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / (name.encode().hex() + ".json")

    @staticmethod
    def _stat_id(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _peer_names(self) -> list[str]:
        if self.directory is None:
            return []
        out = []
        for path in self.directory.glob("*.json"):
            try:
                out.append(bytes.fromhex(path.stem).decode())
            except ValueError:
                continue
        return out

    def _sync(self, name: str) -> None:
        """Make the local view of `name` agree with its record (no-op without a shared folder)."""
        record = self._record_path(name)
        if record is None:
            return
        ident = self._stat_id(record)
        local = self._regions.get(name)
        if local is not None and local.record_id == ident:
            return
        if local is not None:
            self._drop(name)
        if ident is None:
            return
        try:
            rec = orjson.loads(record.read_bytes())
            mapping = _open_object(rec["key"], rec["offset"], rec["byte_size"], name)
        except (OSError, ValueError, KeyError, InferError):
            return  # unregistered or changed meanwhile: the name stays unknown here
        self._add(Region(name, rec["key"], rec["offset"], rec["byte_size"], mapping, rec.get("token", ""), ident))

    def _add(self, region: Region) -> None:
        region.external = EXTERNAL.add(region.mapping, region.key)
        with self._lock:
            self._regions[region.name] = region
        if self.directory is not None and self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(1.0, self._refresh)
            except RuntimeError:  # no event loop (a unit test): peers' unregisters are seen on next use
                pass

    def _refresh(self) -> None:
        """Once a second while this worker holds mappings: drop those a peer unregistered."""
        self._timer = None
        for name in list(self._regions):
            self._sync(name)
        self._close_retired()
        if self._regions:
            self._timer = asyncio.get_running_loop().call_later(1.0, self._refresh)

    def _drop(self, name: str) -> None:
        with self._lock:
            region = self._regions.pop(name, None)
        if region is not None:
            EXTERNAL.remove(region.external)  # later calls copy nothing from it and name it no more
            self._retired.append(region.mapping)

    def _close_retired(self) -> None:
        still = []
        for mapping in self._retired:
            try:
                mapping.close()
            except BufferError:  # an in-flight request still views it
                still.append(mapping)
        self._retired = still
