"""The runtime end to end: real worker processes over shared memory."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmserve
from shmserve import client as shm_client
from shmserve.registry import pid_alive
from tests.conftest import ROOT, shm_entries
from tests.runnables import EchoRunnable, ParkingRunnable

pytestmark = pytest.mark.integration


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value is not None and value is not False and not (isinstance(value, list) and not value):
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def echo(unique_name, shm_clean):
    r = shmserve.Runner(EchoRunnable, name=unique_name, runnable_init_params={"scale": 2.0}, arena_mb=4,
                        max_latency_ms=20)
    with shmserve.start(r, workers=1) as group:
        yield r, group


def test_round_trip_values_and_structures(echo):
    r, _ = echo
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(r.predict.run(x), x * 2)
    assert r.describe.run(x, tag="a") == {"shape": [3, 4], "tag": "a", "sum": 66.0}
    s, d = r.pair.run(x, x + 1)
    np.testing.assert_array_equal(s, 2 * x + 1)
    assert d.dtype == np.float64 and (d == -1).all()
    assert r.sleep.run(0.0) > 0  # no tensors at all
    assert r.pid.run() != os.getpid()


def test_non_contiguous_and_big_endian_inputs(echo):
    r, _ = echo
    base = np.arange(40, dtype=np.float32).reshape(5, 8)
    strided = base[:, ::2]
    np.testing.assert_array_equal(r.predict.run(strided), strided * 2)
    be = np.arange(6, dtype=">f8").reshape(2, 3)
    np.testing.assert_array_equal(r.predict.run(be), be * 2)


def test_large_results_are_leased_and_freed(echo):
    r, _ = echo
    # Each result is 1 MB in a 4 MB result arena: holding none of them, 20 calls must all succeed.
    for _ in range(20):
        y = r.big.run(1 << 20)
        assert y.shape == (1 << 20,) and int(y[-1]) == 1
        del y
    kept = [r.big.run(1 << 20) for _ in range(2)]
    view = kept[0][10:20]  # a view keeps the lease alive after its parent array is gone
    del kept
    assert view.sum() == 10


def test_a_client_whose_result_arena_is_full_does_not_delay_another_client(unique_name, shm_clean, tmp_path):
    # One worker, two clients. Client A holds 3 MB of its 4 MB result arena, then asks for 2 MB more:
    # that result finds no room until A drops what it holds. Meanwhile client B's call on the same
    # worker must be answered (the dispatch loop must not wait for A's room).
    r = shmserve.Runner(ParkingRunnable, name=unique_name, runnable_init_params={"result_wait_s": 60.0},
                        arena_mb=4, timeout=120.0)
    mark = tmp_path / "ran"
    with shmserve.start(r, workers=1):
        held = [r.big.run(1 << 20) for _ in range(3)]
        outcome: dict[str, object] = {}

        def parked_call() -> None:
            try:
                outcome["value"] = r.big.run(2 << 20, mark=str(mark))
            except BaseException as exc:  # reported by the assertions below
                outcome["error"] = exc

        a = threading.Thread(target=parked_call)
        a.start()
        try:
            wait_for(mark.exists, what="client A's call to run in the worker")
            with shmserve.connect(unique_name) as b:
                assert int(b.big.run(10).sum()) == 10
            assert not outcome, f"client A's call finished before it had room: {outcome}"
        finally:
            del held  # A drops its results: now its parked result fits
            a.join(60.0)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["value"].shape == (2 << 20,)  # type: ignore[attr-defined]
        outcome.clear()  # drop the result (its lease) before the runner stops


def test_model_error_reaches_caller_and_runner_keeps_serving(echo):
    r, _ = echo
    with pytest.raises(shmserve.RunnerError) as info:
        r.boom.run(np.ones(2))
    assert info.value.remote_type == "ValueError"
    assert "model exploded on purpose" in str(info.value)
    assert info.value.remote_traceback.startswith("Traceback")
    assert "runnables.py" in info.value.remote_traceback
    np.testing.assert_array_equal(r.predict.run(np.ones(2)), [2, 2])


def test_bad_inputs_are_clear_errors(echo):
    r, _ = echo
    with pytest.raises(shmserve.InvalidInput, match="object"):
        r.predict.run(np.array([None, 1], dtype=object))
    with pytest.raises(shmserve.TensorTooLarge, match="arena_mb"):
        r.predict.run(np.zeros(2 << 20, np.float32))  # 8 MB > 4 MB arena
    with pytest.raises(shmserve.InvalidInput, match="no method"):
        r._backend.call("nope", (), {}, None)
    with pytest.raises(shmserve.InvalidInput, match="batches along dim 0"):
        r.predict.run(np.array(3.0, dtype=np.float32))  # a 0-d tensor has no batch dim
    np.testing.assert_array_equal(r.predict.run(np.ones(1)), [2.0])


def test_timeout(echo):
    r, _ = echo
    with pytest.raises(shmserve.RunnerTimeout):
        r.sleep.run(0.5, timeout=0.05)
    assert r.sleep.run(0.0, timeout=5) > 0  # the late result of the first call is discarded


def test_concurrent_calls_are_batched(echo):
    r, _ = echo
    results = []
    barrier = threading.Barrier(16)

    def call(i):
        barrier.wait()
        for _ in range(10):
            results.append(r.batch_sizes.run(np.ones((1, 3), np.float32))[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 160
    assert max(results) > 1, "no two concurrent calls were ever batched"


def test_batch_of_adjacent_calls_is_a_view_not_a_copy(echo):
    r, _ = echo

    async def main():
        return await asyncio.gather(*[r.batch_info.async_run(np.full((1, 8), i, np.float32)) for i in range(32)])

    infos = np.concatenate(asyncio.run(main()))
    batched = infos[infos[:, 0] > 1]
    assert len(batched), "the 32 concurrent calls were never batched"
    assert (batched[:, 1] == 0).all(), "calls adjacent in one arena were copied instead of viewed"


def test_batches_count_items_and_split_back(echo):
    r, _ = echo

    async def main():
        xs = [np.full((n, 4), n, np.float32) for n in (1, 3, 2, 5)]
        outs = await asyncio.gather(*[r.predict.async_run(x) for x in xs])
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x * 2)
        xs = [np.full((2, k, 3), k, np.float32) for k in (1, 2, 4)]  # batch_dim=1
        outs = await asyncio.gather(*[r.predict_dim1.async_run(x) for x in xs])
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x * 2)

    asyncio.run(main())


def test_oversized_call_runs_alone(unique_name, shm_clean):
    r = shmserve.Runner(EchoRunnable, name=unique_name, max_batch_size=4, arena_mb=4)
    with shmserve.start(r, workers=1):
        out = r.batch_sizes.run(np.ones((10, 2), np.float32))
        assert (out == 10).all()


def test_async_gather_many(echo):
    r, _ = echo

    async def main():
        return await asyncio.gather(*[r.predict.async_run(np.full((1, 4), i, np.float32)) for i in range(200)])

    outs = asyncio.run(main())
    for i, y in enumerate(outs):
        assert (y == 2 * i).all()


def test_trace_hook_sees_the_path(echo):
    r, _ = echo
    traces = []
    hook = lambda name, method, t: traces.append((name, method, t))  # noqa: E731
    shm_client.add_trace_hook(hook)
    try:
        r.predict.run(np.ones((1, 4), np.float32))
    finally:
        shm_client.remove_trace_hook(hook)
    name, method, t = traces[-1]
    assert name == r.name and method == "predict" and t["batch_size"] == 1
    order = ["submit", "dequeue", "batch_start", "model_start", "model_end", "written", "complete"]
    assert [t[k] for k in order] == sorted(t[k] for k in order)


def test_lone_caller_does_not_wait_out_the_window(unique_name, shm_clean):
    # With a 2 s batching window, a lone caller that waited it out would take > 2 s per call.
    r = shmserve.Runner(EchoRunnable, name=unique_name, max_latency_ms=2000, arena_mb=4)
    with shmserve.start(r, workers=1):
        start = time.monotonic()
        for _ in range(5):
            r.predict.run(np.ones((1, 4), np.float32))
        assert time.monotonic() - start < 2.0


def test_killed_worker_fails_calls_fast_and_is_restarted(echo):
    r, group = echo
    old_pid = group.worker_pids(r.name)[0]
    errors = []

    def slow_call():
        try:
            r.sleep.run(30.0)
        except shmserve.RunnerUnavailable as exc:
            errors.append((time.monotonic(), exc))

    t = threading.Thread(target=slow_call)
    t.start()
    wait_for(lambda: _in_flight(r), what="the call to be in flight")
    time.sleep(0.05)  # let the worker start sleeping inside the method
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    t.join(5)
    assert errors, "the in-flight call did not fail"
    assert errors[0][0] - killed_at < 1.0
    new_pid = wait_for(lambda: [p for p in group.worker_pids(r.name) if p != old_pid], what="a restarted worker")[0]
    assert new_pid != old_pid and group.restarts(r.name) == 1
    y = wait_for(lambda: _try(lambda: r.predict.run(np.ones(2))), what="calls to succeed again")
    np.testing.assert_array_equal(y, [2, 2])


def _in_flight(r):
    return any(link.pending for link in r._backend.links)


def _try(fn):
    try:
        return fn()
    except shmserve.RunnerUnavailable:
        return None


def test_connect_from_another_process(echo):
    r, _ = echo
    script = textwrap.dedent(f"""
        import numpy as np, shmserve
        c = shmserve.connect({r.name!r})
        y = c.predict.run(np.ones((2, 2), np.float32))
        print(float(y.sum()))
        c.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8.0"


def test_connect_unknown_runner_is_clear():
    with pytest.raises(shmserve.RunnerUnavailable, match="no runner named"):
        shmserve.connect("does-not-exist", timeout=0.5)


def test_name_clash(echo):
    r, _ = echo
    other = shmserve.Runner(EchoRunnable, name=r.name)
    with pytest.raises(shmserve.RunnerNameClash):
        shmserve.start(other, workers=1)


def test_init_failure_is_reported(unique_name, shm_clean):
    r = shmserve.Runner(EchoRunnable, name=unique_name, runnable_init_params={"nope": 1})
    with pytest.raises(shmserve.RunnerError, match="failed to start") as info:
        shmserve.start(r, workers=1)
    assert "unexpected keyword argument" in info.value.remote_traceback


def test_a_bad_spin_setting_fails_the_start(unique_name, shm_clean, monkeypatch):
    monkeypatch.setenv("SHMSERVE_SPIN_US", "fast")
    r = shmserve.Runner(EchoRunnable, name=unique_name)
    with pytest.raises(shmserve.RunnerError, match="failed to start") as info:
        shmserve.start(r, workers=1)
    assert "SHMSERVE_SPIN_US must be a number of microseconds" in info.value.remote_traceback


def test_calls_work_with_polling_off(unique_name, shm_clean, monkeypatch):
    monkeypatch.setenv("SHMSERVE_SPIN_US", "0")
    r = shmserve.Runner(EchoRunnable, name=unique_name, runnable_init_params={"scale": 2.0}, arena_mb=4)
    with shmserve.start(r, workers=1):
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        for _ in range(3):
            np.testing.assert_array_equal(r.predict.run(x), x * 2)


def test_two_workers_share_load(unique_name, shm_clean):
    r = shmserve.Runner(EchoRunnable, name=unique_name, arena_mb=4)
    with shmserve.start(r, workers=2) as group:
        assert len(group.worker_pids(r.name)) == 2

        async def main():
            return await asyncio.gather(*[r.sleep.async_run(0.05) for _ in range(8)])

        pids = set(asyncio.run(main()))
        assert pids == set(group.worker_pids(r.name))


def test_torch_tensors_cross_as_torch(echo):
    torch = pytest.importorskip("torch")
    r, _ = echo
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    y = r.predict.run(x)
    assert isinstance(y, torch.Tensor) and torch.equal(y, x * 2)


def test_stop_leaves_nothing_and_unbinds(unique_name, runtime_dir):
    before = shm_entries()
    r = shmserve.Runner(EchoRunnable, name=unique_name, arena_mb=4)
    group = shmserve.start(r, workers=1)
    during = shm_entries() - before
    assert during, "expected the doorbell semaphores in /dev/shm while running"
    for name in during:
        assert os.stat("/dev/shm/" + name).st_mode & 0o777 == 0o600
    pids = group.worker_pids(r.name)
    group.stop()
    assert shm_entries() - before == set()
    assert not any(pid_alive(p) for p in pids)
    assert not list(runtime_dir.glob(f"{unique_name}*"))
    with pytest.raises(shmserve.RunnerNotStarted):
        r.predict.run(np.ones(1))


SERVE_SCRIPT = """
import sys, time, numpy as np, shmserve
from tests.runnables import EchoRunnable, ParkingRunnable
if __name__ == "__main__":
    r = shmserve.Runner(EchoRunnable, name=sys.argv[1], arena_mb=4)
    with shmserve.start(r, workers=1) as g:
        r.predict.run(np.ones(2))
        print("ready", *g.worker_pids(r.name), flush=True)
        time.sleep(60)
"""


def _serve_in_subprocess(name, tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), name], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", "the serving process did not start"
    return proc, [int(p) for p in line[1:]]


def test_ctrl_c_cleans_up(unique_name, tmp_path, shm_clean):
    proc, workers = _serve_in_subprocess(unique_name, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.wait(20)  # the with block ran its cleanup on KeyboardInterrupt
    wait_for(lambda: not any(pid_alive(p) for p in workers), what="workers to exit")


def test_sigterm_cleans_up(unique_name, tmp_path, shm_clean):
    proc, workers = _serve_in_subprocess(unique_name, tmp_path)
    proc.terminate()
    assert proc.wait(20) == 143  # SystemExit(128 + SIGTERM) after the with block cleaned up
    wait_for(lambda: not any(pid_alive(p) for p in workers), what="workers to exit")


def test_killed_supervisor_is_swept_on_next_start(unique_name, tmp_path, shm_clean):
    proc, workers = _serve_in_subprocess(unique_name, tmp_path)
    proc.kill()
    proc.wait(10)
    # Orphaned workers notice their supervisor is gone and exit on their own.
    wait_for(lambda: not any(pid_alive(p) for p in workers), what="orphaned workers to exit")
    # The killed run left its doorbell semaphores; the next start sweeps them.
    r = shmserve.Runner(EchoRunnable, name=unique_name, arena_mb=4)
    with shmserve.start(r, workers=1):
        np.testing.assert_array_equal(r.predict.run(np.ones(2)), [1, 1])


def test_killed_client_leaves_nothing(echo):
    r, _ = echo
    before = shm_entries()
    script = textwrap.dedent(f"""
        import time, numpy as np, shmserve
        c = shmserve.connect({r.name!r})
        c.predict.run(np.ones(2))
        print("attached", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "attached"
        assert shm_entries() - before, "expected the client's reply semaphore while it runs"
    finally:
        proc.kill()
        proc.wait(10)
    # The worker sees the client's socket close, finds it dead and removes its semaphore.
    wait_for(lambda: not (shm_entries() - before), what="the killed client's names to go")
    np.testing.assert_array_equal(r.predict.run(np.ones(2)), [2, 2])
