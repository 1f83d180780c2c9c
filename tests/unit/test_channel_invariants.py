"""Invariants of one channel, both ends in this process: what a caller reads is what was written for it.

The worker's side (`shmserve.worker.channel.WorkerChannel`) writes responses into a segment held in
plain memory here, and the client's reading code (`ChannelView.read_desc`, `remote_error`) reads
them back, so no process or shared memory is needed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shmserve.errors import RunnerError, TensorTooLarge
from shmserve.link import free_block, remote_error
from shmserve.shm import ring
from shmserve.shm.wire import META_INLINE_MAX, ChannelLayout
from shmserve.worker.channel import Request, WorkerChannel
from shmserve.worker.results import ResultWriter

ARENA = 8192


class MemorySegment:
    """What WorkerChannel needs of a segment, in process memory."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.size = size

    def close(self) -> None:
        pass


class Posts:
    """The reply semaphore: counts posts."""

    def __init__(self) -> None:
        self.posts = 0

    def post(self) -> None:
        self.posts += 1


def channel(slots: int = 8, arena: int = ARENA) -> WorkerChannel:
    chan = ChannelLayout(slots, arena, arena)
    seg = MemorySegment(chan.total)
    chan.write_header(memoryview(seg.buf))
    return WorkerChannel(seg, None, Posts())  # type: ignore[arg-type]  (no socket: unused here)


def request(ch: WorkerChannel, seq: int) -> Request:
    return Request(seq, ch, ch.view.req_slot(seq), 0, b"", [], 0.0, 0.0, 0.0)


def read(ch: WorkerChannel, n: int) -> tuple[Any, list[Any], bytes]:
    v = ch.view
    return v.read_desc(v.resp_slot(n), v.resp_arena)


def result(ch: WorkerChannel, tmetas: list[Any]) -> np.ndarray:
    (t,) = tmetas
    return np.ndarray(t.shape, np.dtype(t.dtype), ch.view.resp_arena, t.offset).copy()


def fill(ch: WorkerChannel, seq: int) -> None:
    """Write one result that takes (nearly) the whole result arena, and keep it (never freed)."""
    big = np.full((ARENA - 256) // 8, 7.0)
    assert ch.write_result(request(ch, seq), ring.ST_OK, [(big, 0, "<f8")], b"", (0.0,) * 4, 1, wait_s=0.0) == ring.ST_OK


def test_a_result_that_finds_no_room_says_so_in_words() -> None:
    # The arena is full of a result the caller holds. The next result cannot be written, and the
    # answer (TensorTooLarge) needs room for its long message too: it must not point the caller at
    # arena bytes nobody wrote for it (those hold the other result's data).
    ch = channel()
    fill(ch, 0)
    x = np.arange(600, dtype=np.float64)
    code = ch.write_result(request(ch, 1), ring.ST_OK, [(x, 0, "<f8")], b"", (0.0,) * 4, 1, wait_s=0.0)
    assert code == ring.ST_TOO_LARGE
    fixed, tmetas, meta = read(ch, 1)
    assert fixed.seq == 1 and fixed.status == ring.ST_TOO_LARGE and tmetas == []
    info = orjson.loads(meta)  # JSON the worker wrote, not another call's bytes
    err = remote_error("r", "m", fixed.status, meta)
    assert isinstance(err, TensorTooLarge)
    assert "result arena" in info["message"] and "arena_mb" in info["message"], info


def test_an_error_that_finds_no_room_keeps_its_status_and_message() -> None:
    # A model error's metadata (message and traceback) is longer than a descriptor holds inline; with
    # the arena full it still reaches the caller as that error, not as some other call's bytes.
    ch = channel()
    fill(ch, 0)
    meta = orjson.dumps({"type": "ValueError", "message": "model exploded", "traceback": "x" * 500})
    assert len(meta) > META_INLINE_MAX
    ch.write_result(request(ch, 1), ring.ST_MODEL_ERROR, [], meta, (0.0,) * 4, 1, wait_s=0.0)
    fixed, _, got = read(ch, 1)
    err = remote_error("r", "m", fixed.status, got)
    assert fixed.status == ring.ST_MODEL_ERROR and isinstance(err, RunnerError)
    assert "ValueError" in str(err) and "model exploded" in str(err), str(err)


@pytest.mark.parametrize("seed", range(4))
def test_every_response_carries_its_own_result_while_blocks_are_reused(seed: int) -> None:
    # Results of random sizes, freed by the caller in random order (leased results die in any
    # order): each response, read when the caller gets to it, holds exactly its call's result.
    rng = np.random.default_rng(seed)
    ch = channel(slots=16)
    held: dict[int, tuple[Any, list[Any], np.ndarray]] = {}  # seq -> (descriptor, tensors, what was written)
    seq = 0
    for _ in range(400):
        if held and (rng.random() < 0.5 or len(held) >= 15):
            s = int(rng.choice(list(held)))
            fixed, _, _ = held.pop(s)
            free_block(ch.view.resp_arena, fixed.block_off, fixed.block_len)
            continue
        x = np.full(int(rng.integers(1, 300)), float(seq))
        code = ch.write_result(request(ch, seq), ring.ST_OK, [(x, 0, "<f8")], b"", (0.0,) * 4, 1, wait_s=0.0)
        fixed, tmetas, _ = read(ch, seq)
        assert fixed.seq == seq
        if code == ring.ST_OK:
            # Every result still held reads back unchanged: no block was handed out twice.
            for s, (_, tm, want) in held.items():
                np.testing.assert_array_equal(result(ch, tm), want, err_msg=f"result {s}")
            np.testing.assert_array_equal(result(ch, tmetas), x)
            held[seq] = (fixed, tmetas, x)
        ch.view.set(ring.H_RESP_TAIL, seq + 1)  # the caller consumed the descriptor
        seq += 1


def test_answers_after_a_stream_never_overwrite_responses_the_caller_has_not_read() -> None:
    # A streaming call fills the response ring with items the client's reader has not taken yet
    # (each item waits for a free slot, and so does the stream's end). Calls queued meanwhile are
    # then answered through the dispatch loop's writer: their responses must wait for free slots
    # too, instead of being written over unread items (the caller would lose items, or read one
    # call's descriptor half overwritten by another's: one call's seq with another's data).
    ch = channel(slots=4)
    stream = request(ch, 0)
    item = np.arange(3.0)
    for _ in range(4):
        assert ch.wait_response_slot(stream)
        ch.write_result(stream, ring.ST_ITEM, [(item, 0, "<f8")], b"", (0.0,) * 4, 1)
    ch.view.set(ring.H_RESP_TAIL, 1)  # the reader took one response: the stream's end takes its slot
    assert ch.wait_response_slot(stream, final=True)
    ch.write_result(stream, ring.ST_OK, [], b"", (0.0,) * 4, 1)
    writer = ResultWriter()
    x = np.full(5, 9.0)
    writer.write(request(ch, 1), ring.ST_OK, [(x, 0, "<f8")], b"", (0.0,) * 4, 1)
    assert ch.resp_head - ch.view.get(ring.H_RESP_TAIL) <= 4, "a response was written over an unread one"
    assert [read(ch, n)[0][:2] for n in range(1, 5)] == [(0, ring.ST_ITEM)] * 3 + [(0, ring.ST_OK)]
    assert writer  # parked until the reader frees a slot, then written
    ch.view.set(ring.H_RESP_TAIL, 5)
    writer.retry(now=0.0)
    fixed, tmetas, _ = read(ch, 5)
    assert not writer and fixed.seq == 1 and fixed.status == ring.ST_OK
    np.testing.assert_array_equal(result(ch, tmetas), x)


def test_a_parked_answer_that_gives_up_still_waits_for_a_free_response_slot() -> None:
    # The give-up answer (TensorTooLarge after RESULT_SPACE_WAIT_S) is a response too.
    ch = channel(slots=2)
    for seq in range(2):
        ch.write_result(request(ch, seq), ring.ST_OK, [(np.arange(2.0), 0, "<f8")], b"", (0.0,) * 4, 1)
    writer = ResultWriter()
    writer.write(request(ch, 2), ring.ST_OK, [(np.arange(2.0), 0, "<f8")], b"", (0.0,) * 4, 1)
    writer.retry(now=1e9)  # long past its wait
    assert ch.resp_head == 2 and writer
    ch.view.set(ring.H_RESP_TAIL, 1)
    writer.retry(now=1e9)
    assert ch.resp_head == 3 and not writer and read(ch, 2)[0].seq == 2


def test_a_response_for_a_call_nobody_waits_for_still_frees_its_block() -> None:
    # A response whose call is not pending (a second answer to a call already answered, after the
    # worker failed a batch it had partly answered) is dropped; its block must be handed back, or
    # it holds the result arena (reclaimed oldest first) and every later result parks, then fails.
    from shmserve.link import WorkerLink
    from shmserve.shm.wire import H_RESP_TAIL, block_released

    ch = channel()
    ch.write_result(request(ch, 7), ring.ST_OK, [(np.arange(100.0), 0, "<f8")], b"", (0.0,) * 4, 1, wait_s=0.0)
    fixed = read(ch, 0)[0]
    assert fixed.block_len and not block_released(ch.view.resp_arena, fixed.block_off)
    # The client's link over the same segment (one process holds both ends here), with no call pending.
    link = WorkerLink("r", 0, "")
    link.adopt(None, ch.view.segment, ch.view.layout, None, {"pid": 0, "methods": {}}, None)
    done: list[Any] = []
    assert link.collect(lambda *a: None, done) == 0
    assert done == [] and ch.view.get(H_RESP_TAIL) == 1
    assert block_released(ch.view.resp_arena, fixed.block_off)


def test_a_batch_that_fails_after_some_answers_answers_each_call_once(tmp_path: Any) -> None:
    # Writing the second call's result fails: the first call was answered already and must not get
    # a second answer (an error) on top; the second gets the error. Each call: exactly one response.
    from shmserve.runnable import MethodSignature
    from shmserve.worker.dispatch import Dispatcher
    from shmserve.worker_stats import WorkerStats

    class Model:
        def predict(self) -> list[int]:
            return [10, 11]

    ch = channel()
    real = ch.try_write_result
    failed: list[int] = []

    def flaky(req: Request, *args: Any) -> Any:
        if req.seq == 1 and not failed:  # once: the error answer is written
            failed.append(req.seq)
            raise RuntimeError("the result could not be written")
        return real(req, *args)

    ch.try_write_result = flaky  # type: ignore[method-assign]
    d = Dispatcher(Model(), [(MethodSignature("predict", batchable=True), 8, 5.0)],  # type: ignore[arg-type]
                   WorkerStats("r", 0, ["predict"], 0, path=tmp_path / "stats"))
    d.channels = [ch]
    d._assemble = lambda *_a: ((), {})  # type: ignore[method-assign]  # no request data here
    d._run(d.methods[0], [request(ch, 0), request(ch, 1)], batched=True)
    answers = [read(ch, n)[0][:2] for n in range(ch.resp_head)]
    assert answers == [(0, ring.ST_OK), (1, ring.ST_MODEL_ERROR)], answers
