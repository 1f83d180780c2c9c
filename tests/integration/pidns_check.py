"""One process tree of the PID-namespace sweep test (run under ``unshare -p -f --mount-proc``).

    pidns_check.py hold NAME    # serve runner NAME, print its names; then obey "call" / "stop" lines
    pidns_check.py crash NAME   # serve runner NAME, print its names, then die by SIGKILL
    pidns_check.py sweep        # sweep, print what was removed

Each prints JSON lines; test_pidns_sweep.py judges them.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

import shmserve  # noqa: E402
from shmserve import lease, registry  # noqa: E402
from shmserve.shm.segment import owned_names  # noqa: E402
from tests.runnables import EchoRunnable  # noqa: E402


def _say(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def _start(name: str) -> shmserve.RunnerGroup:
    runner = shmserve.Runner(EchoRunnable, name=name, workers=1, arena_mb=1)
    group = shmserve.start(runner)
    ok = bool(np.array_equal(runner.predict.run(np.ones((2, 3), np.float32)), np.ones((2, 3), np.float32)))
    _say({"pid": os.getpid(), "lease": lease.current().id, "names": owned_names().get(lease.current().id, []),
          "call_ok": ok})
    return group


def main() -> None:
    mode = sys.argv[1]
    if mode == "sweep":
        _say({"pid": os.getpid(), "removed": registry.sweep()})
    elif mode == "crash":
        _start(sys.argv[2])
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "hold":
        group = _start(sys.argv[2])
        runner = group.runners[0]
        for line in sys.stdin:
            if line.strip() == "call":
                y = runner.predict.run(np.full((1, 3), 2.0, np.float32))
                _say({"call_ok": bool(np.array_equal(y, np.full((1, 3), 2.0, np.float32)))})
            else:
                break
        group.stop()
        _say({"stopped": True})


if __name__ == "__main__":
    main()
