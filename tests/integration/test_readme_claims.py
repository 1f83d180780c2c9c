"""README claims about the runtime, each checked against real worker processes.

One runner (one worker, a 1 MiB arena) serves the tests of this module; a method gated by
files in a temp dir holds the worker busy while a test sets up what it needs, so nothing
depends on timing. `/readyz` after a killed worker needs `shmserve serve`, started here with a
service of its own.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import re
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shmserve
from tests.conftest import shm_entries
from tests.integration.claims_runnables import ClaimsRunnable, wait_for_file

pytestmark = pytest.mark.integration

ARENA = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    gate = tmp_path_factory.mktemp("gate")
    before = shm_entries()
    r = shmserve.Runner(ClaimsRunnable, name=f"claims{os.getpid()}", runnable_init_params={"gate_dir": str(gate)},
                        arena_mb=1, max_batch_size=16, max_latency_ms=50)
    with shmserve.start(r, workers=1):
        yield r, gate
    gc.collect()
    assert not shm_entries() - before, "the runner left shared memory behind"


def _hold(r, gate: Path, name: str, x: np.ndarray | None = None) -> concurrent.futures.Future:
    """Start `r.hold` in a thread and return once the worker runs it (and is busy with it)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(r.hold.run, name, x, timeout=60)
    pool.shutdown(wait=False)
    assert wait_for_file(gate / f"{name}.started"), "the gated call never started"
    return fut


def test_a_call_finds_the_arena_full_until_its_deadline_then_runner_overloaded(served) -> None:
    r, gate = served
    x = np.ones(600_000, np.uint8)  # over half of the 1 MiB arena: two never fit at once
    held = _hold(r, gate, "arena", x)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # bounded: a hang fails, not blocks
            second = pool.submit(r.nbytes.run, x, timeout=0.5)
            with pytest.raises(shmserve.RunnerOverloaded, match="stayed full"):
                second.result(timeout=20)
    finally:
        (gate / "arena.go").touch()
    assert held.result(timeout=20) > 0
    assert r.nbytes.run(x) == x.nbytes  # the space came back with the first call's answer


def test_calls_differing_in_dtype_trailing_shape_or_arguments_are_never_joined(served) -> None:
    r, gate = served
    calls = {
        "same_1": (np.ones((2, 4), np.float32), "a"),
        "same_2": (np.ones((2, 4), np.float32), "a"),  # joins same_1: the control
        "float64": (np.ones((2, 4), np.float64), "a"),
        "wider": (np.ones((2, 5), np.float32), "a"),
        "other_tag": (np.ones((2, 4), np.float32), "b"),
    }

    async def main() -> dict[str, np.ndarray]:
        tasks = {k: asyncio.ensure_future(r.rows.async_run(x, tag=tag)) for k, (x, tag) in calls.items()}
        await asyncio.sleep(0)  # every task has published its call (submission is synchronous)
        (gate / "batch.go").touch()  # now let the worker go: all five calls are queued together
        return {k: await t for k, t in tasks.items()}

    held = _hold(r, gate, "batch")
    try:
        seen = asyncio.run(main())
    finally:
        (gate / "batch.go").touch()
    held.result(timeout=20)
    batch = {k: set(v.tolist()) for k, v in seen.items()}
    assert batch["same_1"] == batch["same_2"] == {4}, f"the control calls were not joined: {batch}"
    assert batch["float64"] == batch["wider"] == batch["other_tag"] == {2}, batch


def test_connect_maps_channels_without_leaving_names_and_close_removes_the_rest(served) -> None:
    r, _ = served
    before = shm_entries()
    client = shmserve.connect(r.name)
    try:
        assert client.nbytes.run(np.ones(3, np.uint8)) == 3
        mine = shm_entries() - before
        # The channel segment was unlinked once both sides mapped it; only the reply semaphore
        # (a named POSIX semaphore, "sem." in /dev/shm) must persist while the client lives.
        assert mine and all(n.startswith("sem.") for n in mine), f"names left while connected: {sorted(mine)}"
    finally:
        client.close()
    gc.collect()
    assert not shm_entries() - before, "client.close() left names in /dev/shm"


GATED_SERVICE = textwrap.dedent('''
    """A service whose runner worker, once restarted, waits to start until the test says so."""
    import os
    import time
    from pathlib import Path

    import shmserve
    from shmserve.io import JSON

    SUFFIX = os.environ["HTTP_TEST_SUFFIX"]
    GATE = Path(os.environ["CLAIMS_GATE"])


    class Gated(shmserve.Runnable):
        def __init__(self):
            if (GATE / "first").exists():  # a restarted worker: hold its start until "go" exists
                deadline = time.monotonic() + 60
                while not (GATE / "go").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            (GATE / "first").touch()

        @shmserve.Runnable.method()
        def pid(self, x):
            return os.getpid()


    # The watchdog's limits are far off, so only the worker's death can make /readyz fail here.
    gated = shmserve.Runner(Gated, name="gated-" + SUFFIX, workers=1,
                            watchdog={"not_ready_after_s": 120, "restart_after_s": 240})
    svc = shmserve.Service("claims", runners=[gated])


    @svc.api(input=JSON(), output=JSON())
    async def pid(body):
        return await gated.pid.async_run(0)
''')


def test_readyz_is_503_while_a_killed_runner_worker_restarts_then_200(tmp_path, monkeypatch) -> None:
    from tests.integration.test_http_serve import Server, alive, call, post_json, wait_until

    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("CLAIMS_GATE", str(gate))
    srv = Server(tmp_path, api_workers=1, source=GATED_SERVICE)
    try:
        m = re.search(rf"runner 'gated-{srv.suffix}' workers: pids \[(\d+)", srv.log())
        assert m, srv.log()
        victim = int(m.group(1))
        assert call(srv, "GET", "/readyz")[0] == 200
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 503, 20, "/readyz to fail after the kill")
        wait_until(lambda: not alive(victim), 20, "the killed worker to be gone")
        # The restarted worker is held before it can take calls: still not ready.
        status, headers, body = call(srv, "GET", "/readyz")
        assert status == 503 and b"gated-" in body and headers.get("retry-after"), (status, body)
        (gate / "go").touch()
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 200, 30, "/readyz to recover")
        assert post_json(srv, "/pid", {})[2] not in (victim, None)
    finally:
        (gate / "go").touch()
        assert srv.stop() == 0
