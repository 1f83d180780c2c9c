"""Filing a channel read's calls at once (`file_calls`) decides as filing them one by one did.

The reference below is the dispatch loop's former per-call path (validate, expire, `refusal`,
`push`); the batched path must queue the same calls under the same keys, refuse the same ones with
the same statuses, and leave the batching policy in the same state. `prune` skips its scan only
when no queued deadline can fall before the next batch completes.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from shmserve.runnable import MethodSignature
from shmserve.shm.message import KIND_RAW
from shmserve.shm.wire import Status, TensorMeta
from shmserve.worker.channel import Request
from shmserve.worker.queues import MethodSlot, batch_key, expired_reason, file_calls

MS = 1e-3


class FakeChannel:
    closed = False

    def __init__(self) -> None:
        self.cancelled: set[int] = set()

    def abandoned(self, req: Request) -> bool:
        return req.seq in self.cancelled


def slots() -> list[MethodSlot]:
    ms = [MethodSlot(0, MethodSignature("predict", batchable=True), None, 8, 5.0),
          MethodSlot(1, MethodSignature("alone"), None, 8, 5.0),
          MethodSlot(2, MethodSignature("empty_ok", batchable=True, accepts_empty=True), None, 4, 5.0)]
    for m in ms:
        for n in (1, 3, 8):
            m.policy.on_batch_done(n, 2 * MS + 0.5 * MS * n)
    return ms


def calls(rng: random.Random, ch: FakeChannel, now: float) -> list[Request]:
    out = []
    for seq in range(rng.randint(1, 60)):
        kind = rng.choice([0, 0, 0, KIND_RAW])
        rows = rng.choice([0, 1, 1, 2, 5])
        shape = rng.choice([(rows, 4), (rows, 4), (rows, 3), (), (rows,)])
        tensors = [TensorMeta(0, 16, rng.choice(["<f4", "<f4", "<i8"]), shape, kind, 0, 0)
                   for _ in range(rng.choice([1, 1, 1, 2, 0]))]
        deadline = rng.choice([0.0, now + 1.0, now + 0.02, now - 0.001, now + 0.004])
        r = Request(seq, ch, 0, rng.choice([0, 0, 1, 2, 7]), rng.choice([b"", b"", b"k"]), tensors,
                    now - rng.random() * MS, deadline, now, cancelled=rng.random() < 0.05)
        if r.cancelled:
            ch.cancelled.add(seq)
        out.append(r)
    return out


def reference(methods: list[MethodSlot], reqs: list[Request], now: float, busy: dict[int, Any]) -> list[tuple[int, int]]:
    """The former per-call filing: (seq, status) of each refused call."""
    refused = []
    for req in reqs:
        if req.method >= len(methods):
            refused.append((req.seq, Status.BAD_REQUEST))
            continue
        m = methods[req.method]
        key, why = batch_key(m, req)
        if why is not None:
            refused.append((req.seq, Status.BAD_REQUEST))
            continue
        if expired_reason(req, now) is not None:
            refused.append((req.seq, Status.EXPIRED))
            continue
        if m.refusal(req, key, now) is not None:
            refused.append((req.seq, Status.OVERLOADED))
            continue
        if m.push(key, req):
            busy[m.index] = m
    return refused


def queues(methods: list[MethodSlot]) -> list[Any]:
    return [({k: [r.seq for r in q] for k, q in m.queues.items()}, m.queued, m.policy.items_per_call,
             m.policy.arrivals._mean_gap, list(m.policy.arrivals._gaps._sorted)) for m in methods]


@pytest.mark.parametrize("seed", range(20))
def test_a_read_is_filed_as_its_calls_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    one, many = slots(), slots()
    busy_one: dict[int, Any] = {}
    busy_many: dict[int, Any] = {}
    now = 100.0
    for _ in range(5):
        ch = FakeChannel()
        reqs = calls(rng, ch, now)
        for r in reqs:  # fresh copies: filing sets `items`
            r.items = 1
        copies = [Request(r.seq, ch, 0, r.method, r.meta, r.tensors, r.submit, r.deadline, now, r.cancelled)
                  for r in reqs]
        expected = reference(one, reqs, now, busy_one)
        refused: list[Any] = []
        file_calls(many, copies, now, busy_many, refused)
        # refusals at admission are answered after the read's other refusals: the same set
        assert sorted((r.seq, code) for r, code, *_ in refused) == sorted(expected)
        assert all(why for *_, why, _tb in refused)
        assert queues(one) == queues(many)
        assert list(busy_one) == list(busy_many)
        now += 0.003


def test_prune_finds_a_near_deadline_filed_in_a_batch_and_skips_when_none_is_near() -> None:
    m = slots()[0]
    ch = FakeChannel()
    far = [Request(i, ch, 0, 0, b"", [TensorMeta(0, 16, "<f4", (1, 4), 0, 0, 0)], 100.0, 200.0, 100.0)
           for i in range(3)]
    refused: list[Any] = []
    file_calls([m], far, 100.0, {}, refused)
    key = next(iter(m.queues))
    assert m.prune(key, m.queues[key], 100.0) == [] and m.earliest == 200.0
    near = Request(9, ch, 0, 0, b"", [TensorMeta(0, 16, "<f4", (1, 4), 0, 0, 0)], 100.0, 100.05, 100.0)
    file_calls([m], [near], 100.0, {}, refused)
    assert not refused and m.earliest == 100.05
    assert m.prune(key, m.queues[key], 100.0) == []  # scanned: due after the next batch completes
    dead = m.prune(key, m.queues[key], 100.049)
    assert [r.seq for r, _ in dead] == [9] and m.queued == 3
    assert m.earliest == 200.0  # the one queue's deadlines, read again after the scan
