"""What a result was measured on: machine, versions, git commit, date, settings."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = Path(os.environ.get("SHMSERVE_BENCH_DIR", str(REPO.parent / "shared" / "bench")))

# Every process of a benchmark (ours, the server's, the peers') runs numeric
# libraries at one thread, as the common workload prescribes.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}

_PACKAGES = ("numpy", "posix_ipc", "orjson", "uvloop", "httptools", "torch", "matplotlib", "shmserve")


def bench_dir() -> Path:
    """The common workload folder (model, bodies, wrk script)."""
    if not (SHARED_BENCH / "workload.py").exists():
        raise SystemExit(
            f"common workload not found at {SHARED_BENCH}: set SHMSERVE_BENCH_DIR to the folder holding workload.py"
        )
    return SHARED_BENCH


def child_env(**extra: str) -> dict[str, str]:
    """Environment for benchmark child processes: ours plus one-thread numerics and the repo on PYTHONPATH."""
    env = dict(os.environ)
    env.update(THREAD_ENV)
    paths = [str(REPO), str(bench_dir())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def git_info() -> dict[str, Any]:
    """Commit, branch and whether the tree had local changes."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def versions() -> dict[str, str]:
    """Python and the numeric/transport packages that shape the figures."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = "absent"
    if found.get("shmserve") == "absent":  # run from the source tree, not installed
        try:
            import shmserve

            found["shmserve"] = f"{shmserve.__version__} (source tree)"
        except ImportError:
            pass
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
        found["wrk"] = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        found["wrk"] = "absent"
    return found


def machine() -> dict[str, Any]:
    """CPU model and count, memory, kernel, load average at the start."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": list(os.getloadavg()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_mb"] = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    return info


def metadata(mode: str) -> dict[str, Any]:
    """Everything a result file says about where and when it was measured."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "git": git_info(),
        "machine": machine(),
        "versions": versions(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
    }
