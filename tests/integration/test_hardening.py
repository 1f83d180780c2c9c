"""Hostile input, deadlines, overload and hung models against real runner workers."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest

import shmserve
from tests.runnables import GuardedRunnable

pytestmark = pytest.mark.integration


@pytest.fixture
def guarded(unique_name, shm_clean):
    r = shmserve.Runner(GuardedRunnable, name=unique_name, arena_mb=4, max_latency_ms=5)
    with shmserve.start(r, workers=1) as group:
        yield r, group


def test_zero_item_call_is_refused_and_the_worker_keeps_serving(guarded):
    r, group = guarded
    pid = r.pid.run()
    with pytest.raises(shmserve.InvalidInput, match="0 items.*accepts_empty=True"):
        r.predict.run(np.zeros((0, 784), np.float32))
    np.testing.assert_array_equal(r.predict.run(np.ones((2, 3), np.float32)), np.full((2, 3), 2.0))
    assert r.pid.run() == pid and group.restarts(r.name) == 0


def test_a_method_that_declares_it_gets_empty_calls_alone(guarded):
    r, _ = guarded
    out = r.rows.run(np.zeros((0, 5), np.float32))
    assert out.shape == (0,)
    np.testing.assert_array_equal(r.rows.run(np.zeros((3, 5), np.float32)), [3, 3, 3])


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def seconds(s: float) -> np.ndarray:
    """The argument of GuardedRunnable.slow: one item that makes its batch sleep `s` seconds."""
    return np.full((1, 1), s, np.float32)


def test_the_runner_timeout_is_the_default_deadline(unique_name, shm_clean):
    r = shmserve.Runner(GuardedRunnable, name=unique_name, arena_mb=4, timeout=0.3)
    with shmserve.start(r, workers=1):
        start = time.monotonic()
        with pytest.raises(shmserve.RunnerTimeout):
            r.slow.run(seconds(1.5))
        assert time.monotonic() - start < 1.2  # the caller stopped waiting at the deadline, not at the result
        r.slow.run(seconds(0.0), timeout=5.0)  # an explicit timeout overrides the default


def test_a_call_whose_caller_went_away_never_reaches_the_model(guarded):
    r, _ = guarded

    async def scenario():
        first = asyncio.ensure_future(r.slow.async_run(seconds(0.6)))  # keeps the worker busy
        await asyncio.sleep(0.1)
        # Queued behind it; another trailing shape, so the two are never joined into one batch.
        gone = asyncio.ensure_future(r.slow.async_run(np.zeros((1, 2), np.float32)))
        await asyncio.sleep(0.1)
        gone.cancel()  # what the HTTP app does when the client hangs up
        await first
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
    assert r.served.run() == 1  # only the first call ran


def test_overload_is_refused_at_once_and_accepted_calls_meet_their_deadline(unique_name, shm_clean):
    r = shmserve.Runner(GuardedRunnable, name=unique_name, arena_mb=4, max_batch_size=1, max_latency_ms=0)
    with shmserve.start(r, workers=1):
        for _ in range(3):
            r.slow.run(seconds(0.1))  # the cost model learns a batch takes 0.1 s

        async def one(i):
            start = time.monotonic()
            try:
                await r.slow.async_run(seconds(0.1), timeout=0.5)
                return "ok", time.monotonic() - start
            except shmserve.RunnerOverloaded as exc:
                assert "retry later" in str(exc)
                return "refused", time.monotonic() - start
            except shmserve.RunnerTimeout:
                return "timeout", time.monotonic() - start

        async def burst():
            return await asyncio.gather(*(one(i) for i in range(12)))

        results = asyncio.run(burst())
    kinds = [k for k, _ in results]
    assert kinds.count("ok") >= 2 and kinds.count("refused") >= 4, results
    # Refusals come long before the deadline; accepted calls finish within it plus one batch.
    assert max(t for k, t in results if k == "refused") < 0.4, results
    assert max(t for k, t in results if k == "ok") < 0.5 + 0.3, results


WATCHDOG = {"not_ready_after_s": 0.5, "restart_after_s": 2.0}


@pytest.mark.parametrize("how", ["sigstop", "hung_method"])
def test_the_watchdog_marks_a_stalled_worker_not_ready_then_restarts_it(unique_name, shm_clean, how):
    r = shmserve.Runner(GuardedRunnable, name=unique_name, arena_mb=4, watchdog=WATCHDOG, timeout=None)
    with shmserve.start(r, workers=1) as group:
        client = r._backend
        pid = group.worker_pids(r.name)[0]
        assert client.ready()
        errors = []

        def stuck_call():
            try:
                r.slow.run(seconds(60.0))
            except shmserve.RunnerUnavailable as exc:
                errors.append(exc)

        t = threading.Thread(target=stuck_call)
        t.start()
        wait_for(lambda: any(link.pending for link in client.links), what="the call to be in flight")
        if how == "sigstop":
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not client.ready(), timeout=5.0, what="the stalled worker to be not ready")
            with pytest.raises(shmserve.RunnerUnavailable, match="no progress"):
                r.predict.run(np.ones((1, 2), np.float32))  # refused at once instead of queued behind it
            t.join(10.0)
            assert errors, "the call on the hung worker did not fail"
            new_pid = wait_for(lambda: [p for p in group.worker_pids(r.name) if p != pid], what="a restart")[0]
            assert new_pid != pid and group.restarts(r.name) == 1
            wait_for(client.ready, what="the restarted worker to be ready")
            np.testing.assert_array_equal(r.predict.run(np.ones((1, 2), np.float32)), [[2.0, 2.0]])
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            t.join(5.0)


WATCHDOG_CONFIG = """\
version: 1
runners:
  watchdog:
    not_ready_after_s: 0.5
    restart_after_s: 3
"""


def test_readyz_fails_while_a_runner_worker_is_stopped_and_recovers_after_its_restart(tmp_path):
    from tests.integration.test_http_serve import Server, call, post_json, wait_until

    path = tmp_path / "shmserve.yaml"
    path.write_text(WATCHDOG_CONFIG)
    srv = Server(tmp_path, "--config", str(path), api_workers=1)
    victim = 0
    try:
        victim = post_json(srv, "/runner_pid", {})[2]
        assert call(srv, "GET", "/readyz")[0] == 200
        os.kill(victim, signal.SIGSTOP)
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 503, 10, "/readyz to fail")
        status, headers, _ = post_json(srv, "/runner_pid", {})
        assert status == 503 and headers.get("retry-after"), (status, headers)  # refused, not queued
        wait_until(lambda: call(srv, "GET", "/readyz")[0] == 200, 20, "/readyz after the restart")
        assert post_json(srv, "/runner_pid", {})[2] != victim
    finally:
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert srv.stop() == 0


def test_large_json_bodies_decode_in_steps_while_other_requests_are_served(tmp_path):
    """A multi-MB JSON tensor (native API and v2) is decoded right, and small requests finish during its decode.

    Then valid zero-row tensors over HTTP: each a 400, and the runner worker serves on.
    """
    import orjson

    from tests.integration.test_http_serve import read_response, request
    from tests.integration.v2_server import MATHS, V2Server

    rows = np.random.default_rng(0).random((60_000, 3)).round(5)  # ~1.5 MB of JSON text: ~12 pieces
    big = orjson.dumps(rows.tolist())
    v2_body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 3],
                                        "data": rows.tolist()}], "parameters": {"binary_data_output": True}})
    srv = V2Server(tmp_path)
    spans: list[tuple[float, float]] = []
    failed: list[object] = []
    stop = threading.Event()

    def probe() -> None:
        """Small traced /predict calls, one after another; each one's (parsed, encoded) server times."""
        try:
            with srv.connect() as sock:
                buf = bytearray()
                while not stop.is_set():
                    sock.sendall(request("POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json",
                                                                                "X-Shmserve-Trace": "1"}))
                    status, headers, body = read_response(sock, buf)
                    if status != 200:
                        failed.append((status, body[:200]))
                        continue
                    trace = orjson.loads(headers["x-shmserve-trace"])
                    spans.append((trace["parsed"], trace["encoded"]))
        except Exception as exc:  # seen by the test below
            failed.append(exc)

    prober = threading.Thread(target=probe)
    try:
        with srv.connect() as sock:
            sock.sendall(request("GET", "/livez"))
            assert read_response(sock, bytearray())[0] == 200
        prober.start()
        wait_for(lambda: len(spans) >= 3, what="the first small calls")
        with srv.connect() as sock:
            sock.settimeout(60)
            buf = bytearray()
            sock.sendall(request("POST", "/predict", big, {"Content-Type": "application/json",
                                                          "Accept": "application/x-npy", "X-Shmserve-Trace": "1"}))
            status, headers, body = read_response(sock, buf)
            assert status == 200, body[:300]
            from shmserve.npy import parse_npy

            np.testing.assert_allclose(parse_npy(body), rows.astype(np.float32) * 2)
            trace = orjson.loads(headers["x-shmserve-trace"])
            during = [s for s in spans if s[0] > trace["parsed"] and s[1] < trace["decoded"]]
            assert during, "no small call was served while the large body was decoded"

            sock.sendall(request("POST", f"/v2/models/{MATHS}.predict/infer", v2_body,
                                 {"Content-Type": "application/json"}))
            before = len(spans)
            status, headers, body = read_response(sock, buf)
            assert status == 200, body[:300]
            n = int(headers["inference-header-content-length"])
            out = np.frombuffer(body[n:], np.float32).reshape(len(rows), 3)
            np.testing.assert_allclose(out, rows.astype(np.float32) * 2)
            assert len(spans) > before  # small calls went on while the v2 body was decoded and served

            zero_rows = request("POST", "/predict", b"", {"Content-Type": "application/octet-stream",
                                                         "X-Tensor-Dtype": "float32", "X-Tensor-Shape": "0,3"})
            for _ in range(5):  # a valid zero-row tensor is refused; the runner worker stays (the probes see 200s)
                sock.sendall(zero_rows)
                status, _, body = read_response(sock, buf)
                assert status == 400 and b"0 items" in body, (status, body)
            before = len(spans)
            wait_for(lambda: len(spans) > before + 3, what="small calls after the zero-row requests")
        assert not failed, failed
    finally:
        stop.set()
        if prober.is_alive():
            prober.join(30)
        assert srv.stop() == 0, srv.log()
