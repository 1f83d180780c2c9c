"""Run wrk with the common workload's post.lua and parse its report."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .env import bench_dir, child_env

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and error counts."""

    rps: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    raw: str = ""

    @property
    def errors(self) -> int:
        """Requests that did not get a 2xx answer, plus socket errors."""
        return self.non2xx + self.socket_errors


def available() -> bool:
    """Whether the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Parse the text wrk prints with --latency."""
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rps_m:
        raise ValueError("wrk printed no Requests/sec line:\n" + output[-2000:])
    lat: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+(\S+)\s*$", output, re.M):
        lat[f"p{float(pct):g}"] = _ms(value)
    avg_m = re.search(r"^\s+Latency\s+(\S+)", output, re.M)
    if avg_m:
        lat["mean"] = _ms(avg_m.group(1))
    req_m = re.search(r"(\d+) requests in", output)
    non2xx_m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock_m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        rps=float(rps_m.group(1)),
        latency_ms=lat,
        requests=int(req_m.group(1)) if req_m else 0,
        non2xx=int(non2xx_m.group(1)) if non2xx_m else 0,
        socket_errors=sum(int(x) for x in sock_m.groups()) if sock_m else 0,
        raw=output,
    )


def run(url: str, body: Path, ctype: str, connections: int, duration_s: float, threads: int = 1,
        timeout_s: float = 5.0, cpu: int | None = None, script: Path | None = None,
        script_env: dict[str, str] | None = None) -> WrkResult:
    """POST `body` to `url` with wrk for `duration_s` over `connections` connections
    (wrk pinned to `cpu` when given; `script` replaces the common post.lua, with `script_env`)."""
    if not available():
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    env = child_env(BODY=str(body), CTYPE=ctype, **(script_env or {}))
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
        f"--timeout={timeout_s:g}s", "-s", str(script or bench_dir() / "post.lua"), url,
    ]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 60, preexec_fn=pin)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return parse(out.stdout)


def bodies() -> dict[str, tuple[Path, str]]:
    """The request bodies of the common workload: name -> (file, content type)."""
    d = bench_dir()
    return {
        "json": (d / "body_array.json", "application/json"),
        "npy": (d / "body.npy", "application/x-npy"),
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the given processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(stat[11]) + int(stat[12])) / tick
    return total
