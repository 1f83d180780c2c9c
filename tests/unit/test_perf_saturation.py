"""The saturation benchmark's and the callgrind harness's own parts (no servers, no valgrind)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from perf import bench_saturation, callgrind_api, process_cost


def test_cpu_ticks_grow_with_work_and_vanish_with_the_process() -> None:
    before = process_cost.cpu_ticks(os.getpid())
    x = 0
    while process_cost.cpu_ticks(os.getpid()) == before:  # bounded: CPU time always advances
        x += sum(range(10000))
    assert process_cost.cpu_ticks(os.getpid()) > before
    assert process_cost.cpu_ticks(2**22 + 12345) == 0  # beyond pid_max: no such process


def test_raw_body_is_the_json_array_as_float32(tmp_path) -> None:
    try:
        body_set = bench_saturation.bodies(tmp_path)
    except SystemExit:
        pytest.skip("the common workload (SHMSERVE_BENCH_DIR) is not here")
    path, ctype, env = body_set["raw"]
    raw = np.frombuffer(path.read_bytes(), np.float32)
    assert ctype == "application/octet-stream" and env == {"DTYPE": "float32", "SHAPE": "1,784"}
    want = np.asarray(json.loads(body_set["json"][0].read_bytes()), np.float32).ravel()
    assert np.array_equal(raw, want)


def test_request_bytes_carry_length_and_headers() -> None:
    req = callgrind_api._request("/predict", b"abcd", "application/octet-stream", {"x-tensor-dtype": "uint8"})
    head, _, body = req.partition(b"\r\n\r\n")
    assert body == b"abcd"
    assert b"content-length: 4" in head and b"x-tensor-dtype: uint8" in head
    assert head.startswith(b"POST /predict HTTP/1.1\r\n")


def test_top_keeps_function_lines_only() -> None:
    text = ("Profile data file 'x'\n--\n   279,423,875 (100.0%)  PROGRAM TOTALS\n\n"
            "43,429,315 (15.54%)  ceval.c:_PyEval_EvalFrameDefault [libpython]\n"
            "34,372,098 (12.30%)  obmalloc.c:_PyObject_Free [libpython]\n")
    top = callgrind_api._top(text, 2)
    assert len(top) == 2 and "PROGRAM TOTALS" in top[0] and "_PyEval_EvalFrameDefault" in top[1]


def test_wakeups_count_the_sleeps_of_every_thread() -> None:
    import threading
    import time

    before = process_cost.wakeups(os.getpid())
    t = threading.Thread(target=time.sleep, args=(0.01,))  # a thread that blocks once, then ends
    t.start()
    time.sleep(0.01)  # and this one blocks too
    after = process_cost.wakeups(os.getpid())
    t.join()
    assert after >= before + 1
    assert process_cost.wakeups(2**22 + 12345) == 0


def test_each_round_of_a_server_gets_a_log_of_its_own(tmp_path) -> None:
    # The roles of a server's processes are read from its log (pid lines, "serving"); a log shared
    # across rounds made round 2 read round 1's pids and count its API worker as "other".
    from perf.bench_saturation import measure, run_log

    logs = {run_log(tmp_path, name, r) for name in ("shmserve", "shmserve@b36f509", "mosec") for r in range(3)}
    assert len(logs) == 9
    reused = run_log(tmp_path, "mosec", 0)
    reused.write_text("shmserve: serving\n")
    with pytest.raises(ValueError, match="log of its own"):
        measure(None, {}, (), 1.0, reused)  # type: ignore[arg-type]
