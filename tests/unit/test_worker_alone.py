"""A call that runs alone and returns one array is written by `publish_rows`, as a batch's rows
are (`dispatch.write_alone`): the caller reads the same response as from the general write.

Both paths, C and Python (`SHMSERVE_PURE_PYTHON`'s), and the general write as the reference: the
same status, shape, dtype, data and batch size; a channel with a parked result keeps the general
path (its results keep their order); outputs that are not one array of rows do too.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pytest

from shmserve.runnable import MethodSignature
from shmserve.shm import wire
from shmserve.worker import dispatch, rows
from shmserve.worker.dispatch import Dispatcher
from shmserve.worker_stats import WorkerStats
from tests.unit.test_channel_invariants import channel

SLOTS, ARENA = 16, 1 << 16


class Model:
    def echo(self, x: np.ndarray) -> Any:
        return x

    def pair(self, x: np.ndarray) -> Any:
        return (x, x[:1])


def serve(tmp_path: Any, method: int, shapes: list[tuple[int, ...]], park: bool = False) -> list[Any]:
    ch = channel(slots=SLOTS, arena=ARENA)
    d = Dispatcher(Model(), [(MethodSignature("echo"), 1, 0.0), (MethodSignature("pair"), 1, 0.0)],  # type: ignore[arg-type]
                   WorkerStats("r", 0, ["echo", "pair"], 0, path=tmp_path / f"stats{method}{park}"))
    d.channels = [ch]
    for k, shape in enumerate(shapes):
        x = (np.arange(int(np.prod(shape)), dtype=np.float32) + k).reshape(shape)
        n = ch.view.get(wire.H_REQ_HEAD)
        t = [(x, 0, "<f4")]
        off = 4096 * k
        ch.view.requests.copy_in(off, t, [0], b"", 0)
        ch.view.requests.publish(n, 100 + k, method, off, x.nbytes, 0, (0.0,) * 5, 0, t, [off], b"")
    d.intake()
    if park:  # as if an earlier result of this channel waited for room (set after intake, which retries it)
        d.results.parked[ch] = deque()
        d.intake = lambda: None  # type: ignore[method-assign]
    d.step()
    if park:
        d.results.parked.clear()
    out = []
    for _pos, fixed, tensors, meta in ch.view.responses.consume(0):
        out.append((fixed.seq, fixed.status, fixed.batch_size, meta,
                    [(t.shape, t.dtype, bytes(ch.view.resp_arena[t.offset : t.offset + t.nbytes])) for t in tensors]))
    return out


@pytest.fixture(params=["c", "python"])
def path(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(rows, "NATIVE", None)
    elif rows.NATIVE is None:
        pytest.skip("the C accelerator is not built here")
    return str(request.param)


SHAPES = [(3, 4), (1,), (7,), (2, 3, 2)]


@pytest.mark.parametrize("method", [0, 1])
def test_a_lone_calls_array_reads_back_as_from_the_general_write(tmp_path: Any, path: str, method: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[bool] = []
    real = dispatch.write_alone

    def counting(*a: Any) -> bool:
        used.append(ok := real(*a))
        return ok

    monkeypatch.setattr(dispatch, "write_alone", counting)
    fast = serve(tmp_path, method, SHAPES)
    monkeypatch.setattr(dispatch, "write_alone", lambda *a: False)
    general = serve(tmp_path, method, SHAPES)
    assert fast == general and len(fast) == len(SHAPES)
    assert all(status == wire.Status.OK for _seq, status, *_ in fast)
    assert used == [method == 0] * len(SHAPES)  # a tuple of arrays keeps the general path


def test_a_channel_with_a_parked_result_keeps_the_general_path(tmp_path: Any, path: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[bool] = []
    real = dispatch.write_alone
    monkeypatch.setattr(dispatch, "write_alone", lambda *a: used.append(real(*a)) or used[-1])
    serve(tmp_path, 0, SHAPES[:2], park=True)
    assert used == [False, False]
