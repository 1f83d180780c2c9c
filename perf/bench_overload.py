"""Overload and hostile-input benchmark: admission by time, recovery, and zero-row requests.

    python -m perf.bench_overload                          # this tree
    python -m perf.bench_overload --tree /path/to/old/checkout --tree .   # side by side, one run

Two sections, each run against every ``--tree`` (a checkout whose ``shmserve`` the server imports),
in the same run so the machine's load is the same for both:

* ``overload``: a runner whose method sleeps ``--cost-ms`` per batch of at most ``--batch`` items
  (its capacity, ``batch / cost``, does not depend on how busy the CPUs are), served by
  ``shmserve serve`` with one API worker, is offered ``--factor`` times its capacity, open loop,
  for ``--seconds``; each request gives up after ``--client-timeout-s`` (its connection closed).
  Figures: accepted (200) p50/p99, rejections (503) and how fast they came, goodput, and the
  recovery time: from the moment the load stops until a lone request is answered 200 within three
  times the unloaded median. The runner's deadline is ``--deadline-s`` where the tree supports
  ``Runner(timeout=...)``.
* ``zero_rows``: ``examples/service_mlp.py`` offered honest one-row requests at ``--honest-rps``
  and valid zero-row tensors (``x-tensor-shape: 0,784``, empty body) at ``--zero-rps``: the share
  of honest requests answered 200, and what the zero-row requests got.

The figures are printed as a table and written to ``perf/results/overload_<stamp>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .env import REPO, THREAD_ENV
from .loadgen import Outcome, one, open_loop, probe_until, request_bytes
from .procs import free_port, stop, wait_http
from .stats import percentiles

SLOW_SERVICE = textwrap.dedent('''
    """A runner whose batches take a fixed time: its capacity is batch / cost whatever the CPUs do."""
    import inspect
    import os
    import time

    import numpy as np

    import shmserve
    from shmserve.io import NumpyNdarray

    COST_S = float(os.environ["OVERLOAD_COST_S"])
    BATCH = int(os.environ["OVERLOAD_BATCH"])
    DEADLINE = os.environ.get("OVERLOAD_DEADLINE_S", "")


    class Slow(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, x):
            time.sleep(COST_S)
            return x[:, :1] * 2.0


    kwargs = {}
    if DEADLINE and "timeout" in inspect.signature(shmserve.Runner).parameters:
        kwargs["timeout"] = float(DEADLINE)
    runner = shmserve.Runner(Slow, name="overload-" + os.environ["OVERLOAD_SUFFIX"], max_batch_size=BATCH,
                             max_latency_ms=5, workers=1, **kwargs)
    svc = shmserve.Service("overload", runners=[runner])


    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(x):
        return await runner.predict.async_run(x)
''')


def _tensor_request(rows: int, cols: int) -> bytes:
    body = np.ones((rows, cols), np.float32).tobytes()
    return request_bytes("/predict", body, {"content-type": "application/octet-stream",
                                            "x-tensor-dtype": "float32", "x-tensor-shape": f"{rows},{cols}"})


def _start(tree: Path, service: str, cwd: Path, env_extra: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(cwd)])
    cmd = [sys.executable, "-m", "shmserve.cli", "serve", service, "--host", "127.0.0.1", "--port", str(port),
           "--api-workers", "1"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 90, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"the server of {tree} did not get ready; see {log}") from None
    return proc, port


def _summary(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    ok = [o.latency_s * 1e3 for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 503]
    rej_ms = [o.latency_s * 1e3 for o in rejected]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[str(o.status)] = counts.get(str(o.status), 0) + 1
    return {
        "sent": len(outcomes),
        "statuses": dict(sorted(counts.items())),
        "goodput_rps": len(ok) / seconds,
        "accepted_ms": percentiles(ok, (50, 99)),
        "rejected_ms": percentiles(rej_ms, (50, 99)),
        "rejected_with_retry_after": sum(1 for o in rejected if o.retry_after),
    }


async def _overload(port: int, args: argparse.Namespace) -> dict[str, Any]:
    raw = _tensor_request(1, 4)
    for _ in range(10):  # warm-up: the batching policy learns the cost
        await one(port, raw, 10.0)
    unloaded = [(await one(port, raw, 10.0)).latency_s for _ in range(20)]
    base_s = float(np.median(unloaded))
    capacity = args.batch / (args.cost_ms / 1e3)
    rate = args.factor * capacity
    load = asyncio.create_task(open_loop(port, [(raw, rate)], args.seconds, args.client_timeout_s))
    await asyncio.sleep(args.seconds)
    good_s = max(3 * base_s, 0.05)
    recovery = await probe_until(port, raw, good_s, give_up_s=args.client_timeout_s * 4)
    (outcomes,) = await load
    out = _summary(outcomes, args.seconds)
    out.update(capacity_rps=capacity, offered_rps=rate, unloaded_p50_ms=base_s * 1e3, recovery_s=recovery,
               recovery_good_ms=good_s * 1e3)
    return out


async def _zero_rows(port: int, args: argparse.Namespace) -> dict[str, Any]:
    honest = _tensor_request(1, 784)
    zero = _tensor_request(0, 784)
    for _ in range(5):
        await one(port, honest, 10.0)
    good, bad = await open_loop(port, [(honest, args.honest_rps), (zero, args.zero_rps)], args.seconds, 10.0)
    ok = sum(1 for o in good if o.status == 200)
    return {"honest_sent": len(good), "honest_ok": ok, "honest_success": ok / max(1, len(good)),
            "honest": _summary(good, args.seconds), "zero_rows": _summary(bad, args.seconds)}


def run_tree(tree: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both sections against the `shmserve` of `tree`."""
    results: dict[str, Any] = {"tree": str(tree)}
    logs = REPO / "perf" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{abs(hash(str(tree))) % 10**6}_{os.getpid()}"
    if "overload" in args.sections:
        env = {"OVERLOAD_COST_S": str(args.cost_ms / 1e3), "OVERLOAD_BATCH": str(args.batch),
               "OVERLOAD_DEADLINE_S": str(args.deadline_s), "OVERLOAD_SUFFIX": tag}
        proc, port = _start(tree, "overload_service:svc", workdir, env, logs / f"overload_{tag}.log")
        try:
            results["overload"] = asyncio.run(_overload(port, args))
        finally:
            stop(proc)
    if "zero_rows" in args.sections:
        proc, port = _start(tree, "service_mlp:svc", REPO / "examples", {}, logs / f"zero_rows_{tag}.log")
        try:
            results["zero_rows"] = asyncio.run(_zero_rows(port, args))
        finally:
            stop(proc)
    return results


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def table(runs: list[dict[str, Any]]) -> str:
    """The figures of every tree side by side, with last/first ratios."""
    rows: list[tuple[str, list[Any]]] = []

    def add(name: str, get: Any) -> None:
        vals = []
        for r in runs:
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                vals.append(None)
        rows.append((name, vals))

    add("overload: offered / capacity (req/s)", lambda r: f"{r['overload']['offered_rps']:.0f} / "
                                                          f"{r['overload']['capacity_rps']:.0f}")
    add("overload: accepted p50 ms", lambda r: r["overload"]["accepted_ms"]["p50"])
    add("overload: accepted p99 ms", lambda r: r["overload"]["accepted_ms"]["p99"])
    add("overload: goodput req/s", lambda r: r["overload"]["goodput_rps"])
    add("overload: statuses", lambda r: r["overload"]["statuses"])
    add("overload: 503 p50 ms", lambda r: r["overload"]["rejected_ms"]["p50"])
    add("overload: 503 p99 ms", lambda r: r["overload"]["rejected_ms"]["p99"])
    add("overload: 503 with Retry-After", lambda r: r["overload"]["rejected_with_retry_after"])
    add("overload: recovery s", lambda r: r["overload"]["recovery_s"])
    add("zero rows: honest success", lambda r: r["zero_rows"]["honest_success"])
    add("zero rows: honest p99 ms", lambda r: r["zero_rows"]["honest"]["accepted_ms"]["p99"])
    add("zero rows: zero-row statuses", lambda r: r["zero_rows"]["zero_rows"]["statuses"])
    lines = ["| figure | " + " | ".join(Path(r["tree"]).name or r["tree"] for r in runs) +
             (" | last / first |" if len(runs) > 1 else " |"), "|---" * (len(runs) + 1 + (len(runs) > 1)) + "|"]
    for name, vals in rows:
        ratio = ""
        if len(vals) > 1 and all(isinstance(v, (int, float)) for v in (vals[0], vals[-1])) and vals[0]:
            ratio = _fmt(vals[-1] / vals[0])
        cells = " | ".join(_fmt(v) for v in vals)
        lines.append(f"| {name} | {cells} |" + (f" {ratio} |" if len(vals) > 1 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_overload", description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout whose shmserve to serve (repeatable)")
    parser.add_argument("--sections", default="overload,zero_rows")
    parser.add_argument("--cost-ms", type=float, default=50.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--deadline-s", type=float, default=1.0)
    parser.add_argument("--client-timeout-s", type=float, default=10.0)
    parser.add_argument("--honest-rps", type=float, default=20.0)
    parser.add_argument("--zero-rps", type=float, default=10.0)
    args = parser.parse_args(argv)
    args.sections = set(args.sections.split(","))
    trees = [t.resolve() for t in (args.tree or [REPO])]
    runs = []
    with tempfile.TemporaryDirectory(prefix="shs-overload-") as tmp:
        workdir = Path(tmp)
        (workdir / "overload_service.py").write_text(SLOW_SERVICE)
        for tree in trees:
            t0 = time.monotonic()
            runs.append(run_tree(tree, args, workdir))
            print(f"{tree}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print(table(runs))
    out = REPO / "perf" / "results" / f"overload_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_bytes(orjson.dumps({"args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path)
                                               else v) for k, v in vars(args).items() if k != "tree"},
                                  "load_average": os.getloadavg(), "runs": runs}, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
