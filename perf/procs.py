"""Process helpers: threads, CPU time and memory of processes, waiting on ports and URLs, clean stops."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def threads(pid: int) -> list[int]:
    """Thread ids of `pid` (0 means this process); empty once it is gone."""
    real = os.getpid() if pid == 0 else pid
    try:
        return [int(t) for t in os.listdir(f"/proc/{real}/task")]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU seconds the threads of `pid` have run so far (from schedstat, in ns: finer than clock ticks)."""
    real = os.getpid() if pid == 0 else pid
    total = 0
    for tid in threads(real):
        try:
            with open(f"/proc/{real}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended
    return total / 1e9


def memory_of(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of one process in MB, from /proc/<pid>/smaps_rollup."""
    fields = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in fields:
                fields[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    kb = 1024.0
    return {
        "rss_mb": fields["Rss"] / kb,
        "pss_mb": fields["Pss"] / kb,
        "uss_mb": (fields["Private_Clean"] + fields["Private_Dirty"]) / kb,
    }


def cmdline(pid: int) -> str:
    """The process's command line, spaces between arguments."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (children, grandchildren...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> float:
    """Poll `url` until it answers 200; return seconds waited. Raises on timeout or if `proc` exits."""
    start = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() - start > deadline_s:
            raise TimeoutError(f"{url} did not answer 200 within {deadline_s:.0f} s")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def close_stdin_and_wait(proc: subprocess.Popen, timeout_s: float) -> None:
    """End a child that stops when its stdin closes: close it, wait `timeout_s`, then kill it."""
    if proc.poll() is not None:
        return
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen, grace_s: float = 10.0, group: bool = False) -> int | None:
    """SIGTERM the process (its whole process group with `group`), wait `grace_s`, then SIGKILL
    it and any descendant still alive, so no worker outlives the benchmark.

    A supervisor (shmserve serve) gets the signal alone, so it can stop its
    workers in order; peers whose front ends do not forward signals get `group`."""
    kids = descendants(proc.pid)
    if proc.poll() is None:
        try:
            if group and os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + 5.0
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in kids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.returncode
