"""What each process of a server under load costs per request: CPU µs and wake-ups, per process role.

Around a load run (wrk), the utime + stime of every process of the server
(``/proc/<pid>/stat``, all its threads: an API worker's access-log writer
thread counts with its event loop) and the voluntary context switches of all
its threads are read; their deltas divided by the requests served are the
figures. CPU per request moves far less with a shared machine's load than
req/s does, which is why the benchmarks report it beside req/s::

    pids = shmserve_roles(proc.pid, log)
    before = snapshot(pids)
    res = wrk.run(...)
    cpu, woken = per_request(pids, before, snapshot(pids), res.requests)

Within one process (the API worker), `thread_snapshot` and `per_thread_request`
split the same figures between its main thread (the event loop) and the
others (the access-log/span writer, the span exporter, the runner client's
threads): what the loop pays itself, and what runs beside it on the other
core, contending for the GIL::

    before = thread_snapshot(api_pid)
    res = wrk.run(...)
    split = per_thread_request(api_pid, before, thread_snapshot(api_pid), res.requests)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .procs import cmdline, descendants

__all__ = ["cpu_ticks", "wakeups", "shmserve_roles", "snapshot", "per_request", "IGNORED_ROLES", "thread_snapshot",
           "per_thread_request"]

_TICK = os.sysconf("SC_CLK_TCK")
IGNORED_ROLES = ("resource_tracker", "other")  # processes no request goes through


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (every thread), in clock ticks; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(stat[11]) + int(stat[12])


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far: how often it slept and was woken."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass  # the thread ended
    return total


def shmserve_roles(root: int, log: Path) -> dict[int, str]:
    """pid -> role (supervisor, api_worker, runner_worker, ...) of the `shmserve serve` rooted at `root`."""
    from .bench_http import roles_from_log

    # /readyz answers once the first API worker listens; the supervisor logs every worker's pid
    # only when all are ready, just before its "serving" line (with several API workers, later).
    deadline = time.monotonic() + 120
    while "shmserve: serving" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    known = roles_from_log(log)
    roles = {root: "supervisor"}
    for pid in descendants(root):
        cmd = cmdline(pid)
        roles[pid] = known.get(pid) or ("resource_tracker" if "resource_tracker" in cmd else "other")
    return roles


def snapshot(pids: dict[int, str]) -> dict[int, tuple[int, int]]:
    """pid -> (CPU ticks, wake-ups) so far, for every process in `pids`."""
    return {pid: (cpu_ticks(pid), wakeups(pid)) for pid in pids}


def per_request(pids: dict[int, str], before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                requests: int) -> tuple[dict[str, float], dict[str, float]]:
    """(CPU µs per request, wake-ups per request) per role between two snapshots.

    Several processes of one role (API workers) are summed: the CPU one request costs."""
    n = max(1, requests)
    cpu: dict[str, float] = {}
    woken: dict[str, float] = {}
    for pid, role in pids.items():
        if role in IGNORED_ROLES:
            continue
        cpu[role] = cpu.get(role, 0.0) + (after[pid][0] - before[pid][0]) / _TICK / n * 1e6
        woken[role] = woken.get(role, 0.0) + (after[pid][1] - before[pid][1]) / n
    return cpu, woken


def thread_snapshot(pid: int) -> dict[int, tuple[int, int, int, int]]:
    """tid -> (utime ticks, stime ticks, voluntary, involuntary context switches) of every thread of `pid`."""
    out: dict[int, tuple[int, int, int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            switches = {k: int(v) for k, _, v in (line.partition(":") for line in
                        Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines())
                        if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
        except (OSError, ValueError):
            continue  # the thread ended
        out[int(tid)] = (int(stat[11]), int(stat[12]), switches.get("voluntary_ctxt_switches", 0),
                         switches.get("nonvoluntary_ctxt_switches", 0))
    return out


def per_thread_request(pid: int, before: dict[int, tuple[int, int, int, int]],
                       after: dict[int, tuple[int, int, int, int]], requests: int) -> dict[str, dict[str, float]]:
    """Per request, for the main thread of `pid` ("loop": an API worker's event loop) and its other threads
    together ("others"): CPU µs (user, system, both) and voluntary and involuntary context switches.

    A thread that started between the snapshots counts from zero; one that ended is missing from `after`
    and its last interval is lost (the writer threads live as long as the server)."""
    n = max(1, requests)
    tick_us = 1e6 / _TICK
    split: dict[str, dict[str, float]] = {}
    for tid, now in after.items():
        then = before.get(tid, (0, 0, 0, 0))
        part = split.setdefault("loop" if tid == pid else "others",
                                {"user_us": 0.0, "sys_us": 0.0, "cpu_us": 0.0, "voluntary": 0.0, "involuntary": 0.0,
                                 "threads": 0})
        user, system = (now[0] - then[0]) * tick_us / n, (now[1] - then[1]) * tick_us / n
        part["user_us"] += user
        part["sys_us"] += system
        part["cpu_us"] += user + system
        part["voluntary"] += (now[2] - then[2]) / n
        part["involuntary"] += (now[3] - then[3]) / n
        part["threads"] += 1
    return split
