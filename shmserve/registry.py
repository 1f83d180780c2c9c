"""The runner registry, and sweeping what crashed runs left behind.

The runtime directory (`shmserve.lease.runtime_dir`) holds one
``<runner>.json`` per running runner (its supervisor's lease and pid, and its
worker sockets) and the workers' Unix sockets. Only the supervisor that
registered a runner writes its file. A record counts only while the lease it
names is held (`shmserve.lease`), so a supervisor in another PID namespace,
or a pid reused after a restart, is judged correctly.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any

import orjson

from . import lease
from .errors import RunnerNameClash, RunnerUnavailable
from .lease import runtime_dir
from .shm.segment import owned_names, unlink_name

log = logging.getLogger("shmserve")

__all__ = ["runtime_dir", "pid_alive", "register", "update", "unregister", "lookup", "sweep", "metrics_dir"]

DEV_SHM = Path("/dev/shm")
METRICS_PREFIX = "metrics-"
#: the initial PID namespace's /proc/self/ns/pid (PROC_PID_INIT_INO): every process on the host is visible from it
INIT_PID_NS = "pid:[4026531836]"
#: a name whose lease is nowhere is judged only once it is this old (its creator may hand it over meanwhile)
ORPHAN_AGE_S = 60.0
#: a runner worker's Unix socket in the runtime directory: ``<runner>-<index>.sock``
_WORKER_SOCKET = re.compile(r"^.+-[0-9]+\.sock$")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs in this PID namespace (a zombie counts as dead).

    Only for processes known to share this namespace (a parent, its own
    children); liveness across processes is decided by leases.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)


def _holder(path: Path, leases: Path | None = None) -> tuple[str, Any]:
    """(lease state, pid) of the process that wrote a registry record (its lease judged in `leases`)."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return lease.DEAD, None  # unreadable: records appear whole (link/rename), so it is corrupt
    if not isinstance(record, dict):
        return lease.DEAD, None
    return lease.state(str(record.get("lease", "")), leases), record.get("supervisor_pid")


def _staged(path: Path, record: dict[str, Any]) -> Path:
    """Write `record` (with this process's lease) beside `path` under a temporary name, for an
    atomic link or rename: a reader never sees a half-written record."""
    tmp = path.with_name(f".{path.stem}.{lease.current().id}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps({**record, "lease": lease.current().id, "supervisor_pid": os.getpid()}))
    return tmp


def register(name: str, record: dict[str, Any]) -> Path:
    """Claim runner `name` for this process; RunnerNameClash if a live process holds it.

    The record gets this process's lease id (and pid, for people reading it).
    """
    path = runtime_dir() / f"{name}.json"
    tmp = _staged(path, record)
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic, and fails if the name is taken
            except FileExistsError:
                state, pid = _holder(path)
                if state == lease.LIVE:
                    raise RunnerNameClash(
                        f"a runner named {name!r} is already served by process {pid}; "
                        "runner names must be unique on a host (give this one another name)"
                    ) from None
                path.unlink(missing_ok=True)  # left by a run that was killed
                continue
            return path
    finally:
        tmp.unlink(missing_ok=True)
    raise RunnerNameClash(f"could not claim runner name {name!r} in {path.parent}")


def update(name: str, record: dict[str, Any]) -> None:
    """Replace this process's record of runner `name` atomically."""
    path = runtime_dir() / f"{name}.json"
    os.replace(_staged(path, record), path)


def unregister(name: str) -> None:
    (runtime_dir() / f"{name}.json").unlink(missing_ok=True)


def lookup(name: str) -> dict[str, Any]:
    """The record of running runner `name`; RunnerUnavailable if none runs."""
    path = runtime_dir() / f"{name}.json"
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunnerUnavailable(
            f"no runner named {name!r} is running on this host (looked in {path.parent}); start it with shmserve.start()"
        ) from None
    if lease.state(str(record.get("lease", ""))) != lease.LIVE:
        raise RunnerUnavailable(f"runner {name!r} was registered by process {record.get('supervisor_pid')}, "
                                "which has exited; start it again")
    return dict(record)


def metrics_dir() -> Path:
    """A new private metrics folder for this process, swept when its lease dies (``shmserve serve``)."""
    path = runtime_dir() / f"{METRICS_PREFIX}{lease.current().id}"
    path.mkdir(mode=0o700, exist_ok=True)  # a second serve() in one process shares the lease
    return path


def _live_sockets(rdir: Path, leases: Path) -> set[str]:
    """The worker socket paths named by the records of live runners (their leases judged in `leases`)."""
    live: set[str] = set()
    for rec in rdir.glob("*.json"):
        try:
            record = orjson.loads(rec.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or lease.state(str(record.get("lease", "")), leases) != lease.LIVE:
            continue
        for worker in record.get("workers") or ():
            if isinstance(worker, dict) and isinstance(worker.get("socket"), str):
                live.add(worker["socket"])
    return live


def _listening(path: Path) -> bool:
    """Whether a process listens on Unix socket `path` (a dead one's file refuses the connection)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        # ECONNREFUSED: nobody listens on it; ENOENT: gone meanwhile. Anything else (a full
        # backlog: EAGAIN, a timeout) means someone might: keep it.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def _sweep_sockets(rdir: Path, leases: Path) -> list[str]:
    """Remove the worker sockets of dead runs (SIGKILL leaves them; a clean stop unlinks them); their paths.

    A socket goes only when no live runner's record names it and nobody listens on it:
    a starting runner names its sockets in its record before its workers bind them.
    """
    live = _live_sockets(rdir, leases)
    removed: list[str] = []
    for path in rdir.glob("*.sock"):
        if not _WORKER_SOCKET.match(path.name) or str(path) in live:
            continue
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode) or _listening(path):
                continue
            os.unlink(path)
            removed.append(str(path))
        except FileNotFoundError:
            pass
    return removed


def _lease_elsewhere(lease_id: str, leases: Path) -> bool:
    """Whether lease `lease_id` has a file in the default runtime directory (when this one is another)."""
    default = Path(f"/tmp/shmserve-{os.getuid()}") / "leases"
    return default != leases and lease.state(lease_id, default) != lease.UNKNOWN


def _look_into(pid_dir: Path) -> tuple[str, list[str]]:
    """A process's memory maps and the targets of its open descriptors (PermissionError if not ours to read)."""
    maps = (pid_dir / "maps").read_text(errors="replace")
    return maps, [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]


def holders(proc: Path, shm: Path, uid: int) -> set[str] | None:
    """The /dev/shm entries some process maps or holds open, or None when that cannot be known.

    Known only from the initial PID namespace (from any other, processes of sibling namespaces
    sharing /dev/shm are invisible) and when every process that could open a name of `uid`'s
    (`uid` itself and root: names are 0600) lets its maps and descriptors be read.
    """
    try:
        if os.readlink(proc / "self" / "ns" / "pid") != INIT_PID_NS:
            return None
    except OSError:
        return None
    prefix = str(shm).rstrip("/") + "/"
    held: set[str] = set()
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            maps, fds = _look_into(pid_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        except PermissionError:
            try:
                uids = {int(u) for line in (pid_dir / "status").read_text().splitlines()
                        if line.startswith("Uid:") for u in line.split()[1:]}
            except (OSError, ValueError):
                return None
            if uids & {uid, 0}:
                return None  # it could hold one of ours, and it cannot be looked into
            continue
        except OSError:
            continue
        for line in maps.splitlines():
            where = line.find(prefix)
            if where >= 0:
                held.add(line[where + len(prefix):].removesuffix(" (deleted)"))
        held.update(f[len(prefix):].removesuffix(" (deleted)") for f in fds if f.startswith(prefix))
    return held


def _orphans(names: dict[str, list[str]], leases: Path, proc: Path = Path("/proc"), shm: Path = DEV_SHM) -> list[str]:
    """Names of this user's whose lease is in no runtime directory here, and that no process holds.

    Such a name (an ad-hoc client killed while using another runtime directory that is gone
    since) has nothing to judge its owner by, so it goes only on proof that nobody uses it:
    older than `ORPHAN_AGE_S`, and mapped or held open by no process (`holders`).
    """
    uid, now = os.getuid(), time.time()
    candidates: list[str] = []
    for lease_id, entries in names.items():
        if lease.state(lease_id, leases) != lease.UNKNOWN or _lease_elsewhere(lease_id, leases):
            continue
        for entry in entries:
            try:
                st = os.lstat(shm / entry)
            except OSError:
                continue
            if st.st_uid == uid and now - st.st_ctime >= ORPHAN_AGE_S:
                candidates.append(entry)
    if not candidates:
        return []
    held = holders(proc, shm, uid)
    if held is None:
        return []
    return [e for e in candidates if e not in held]


def sweep() -> list[str]:
    """Remove what processes whose lease is dead left: names in /dev/shm, registry records,
    worker snapshots, metrics folders, worker sockets, and then their lease files. Returns what was removed, and
    logs a warning with the counts when anything was.

    Called at every start, so a run that was killed (SIGKILL, power loss of a
    container) leaves nothing behind for long. Names whose lease file is not
    in this runtime directory (nor the default one) may belong to live runs that
    use another: they are removed only when provably orphaned (`_orphans`: this
    user's, a minute old, and no process maps or holds them, which can be known
    from the initial PID namespace only), and counted apart in the warning.
    """
    names_removed: list[str] = []
    records: list[str] = []
    folders: list[str] = []
    rdir = runtime_dir()
    leases = lease.lease_dir()
    dead = lease.dead(leases)
    names = owned_names()
    for lease_id in dead:
        names_removed.extend(e for e in names.get(lease_id, []) if unlink_name(e))
    orphans = [e for e in _orphans(names, leases) if unlink_name(e)]
    names_removed.extend(orphans)
    for rec in rdir.glob("*.json"):
        if _holder(rec, leases)[0] != lease.LIVE:
            rec.unlink(missing_ok=True)
            records.append(str(rec))
    staged = 0
    for tmp in rdir.glob(".*.tmp"):  # a record staged by a process killed before it linked it
        if lease.state(tmp.name.rsplit(".", 2)[-2], leases) != lease.LIVE:
            tmp.unlink(missing_ok=True)
            staged += 1
    for folder in rdir.glob(f"{METRICS_PREFIX}*"):
        if lease.state(folder.name[len(METRICS_PREFIX):], leases) != lease.LIVE:
            shutil.rmtree(folder, ignore_errors=True)
            folders.append(str(folder))
    sockets = _sweep_sockets(rdir, leases)  # after the records: a dead runner's record no longer names them live
    for lease_id in dead:  # last: a sweep killed halfway finds the rest next time
        lease.remove(lease_id, leases)
    unfinished = lease.sweep_unfinished(leases)
    removed = names_removed + records + folders + sockets
    if removed or staged or unfinished or dead:
        log.warning("removed what %d processes that died without cleaning up left in %s and /dev/shm: "
                    "%d shared-memory names (%d of no known lease), %d registry records (%d half-written), "
                    "%d metrics folders, %d worker sockets, %d lease files (%d half-made)", len(dead), rdir,
                    len(names_removed), len(orphans), len(records) + staged, staged, len(folders), len(sockets),
                    len(dead) + unfinished, unfinished)
    return removed
