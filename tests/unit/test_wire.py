"""The wire's declarations: docs/transport.md computed from them, and every record round-tripped."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from shmserve.shm import handshake, wire
from shmserve.shm.channel import ChannelView
from shmserve.shm.message import encode_call, encode_result
from shmserve.shm.wire import ChannelLayout, RequestDesc, ResponseDesc, Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "transport.md"


def doc_tables() -> dict[str, list[list[str]]]:
    """The tables of the doc's wire section, by the first words of the paragraph above each."""
    text = DOC.read_text()
    section = text[text.index("## The wire"):]
    section = section[: section.index("\n## ", 1)]
    tables: dict[str, list[list[str]]] = {}
    caption = ""
    for block in section.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("|"):
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
            tables[caption] = rows
        elif lines:
            caption = " ".join(lines[0].split()[:2])
    return tables


def offsets_and_sizes(rows: list[list[str]]) -> dict[str, tuple[int, int]]:
    return {r[2]: (int(r[0]), int(r[1])) for r in rows}


def test_the_docs_header_words_are_the_declared_ones():
    documented = offsets_and_sizes(doc_tables()["Header words"])
    assert documented == {name: (off, 8) for name, off in wire.HEADER_WORDS.items()}
    assert max(off for off, _ in documented.values()) + 8 <= wire.HEADER_SIZE
    cursors = [wire.H_REQ_HEAD, wire.H_REQ_TAIL, wire.H_RESP_HEAD, wire.H_RESP_TAIL, wire.H_DRAINED_AT]
    assert len({off // wire.CACHE_LINE for off in cursors}) == len(cursors)  # no two share a cache line


def test_the_docs_descriptor_is_the_declared_one():
    documented = offsets_and_sizes(doc_tables()["Descriptor (1024"])
    declared = dict(wire.DESC_FIELDS)
    declared["meta"] = (wire.META_INLINE_OFF, wire.META_INLINE_MAX)
    declared["tensors"] = (wire.TENSORS_OFF, wire.MAX_TENSORS * wire.TENSOR_SLOT)
    assert documented == declared
    assert wire.TENSORS_OFF + wire.MAX_TENSORS * wire.TENSOR_SLOT == wire.DESC_SIZE == 1024
    # the request and response records name every fixed field, in order, but the tag (read on its own)
    assert list(wire.DESC_FIELDS)[-1] == "request_tag" and wire.DESC_FIELDS["request_tag"] == (104, 24)
    assert len(RequestDesc._fields) == len(ResponseDesc._fields) == len(wire.DESC_FIELDS) - 1


def test_the_docs_tensor_header_and_block_header_are_the_declared_ones():
    tables = doc_tables()
    assert offsets_and_sizes(tables["Tensor header"]) == wire.TENSOR_FIELDS
    assert wire.TENSOR_HEADER.size == wire.TENSOR_SLOT == 96
    assert offsets_and_sizes(tables["Result block"]) == wire.BLOCK_FIELDS
    assert wire.BLOCK_HEADER == 16


def test_the_docs_statuses_are_the_enum():
    documented = {int(r[0]): r[1] for r in doc_tables()["Response statuses"]}
    assert documented == {s.value: s.name for s in Status}


def test_the_module_docstring_agrees_with_the_declarations():
    # the docstring draws the same layout in prose; its offsets are checked too
    doc = wire.__doc__ or ""
    for name, (off, _size) in wire.DESC_FIELDS.items():
        assert re.search(rf"^\s+{off}\s+{name}\b", doc, re.M), name
    for name, (off, _size) in wire.TENSOR_FIELDS.items():
        assert re.search(rf"^\s+{off}\s+{name}\b", doc, re.M), name
    for name, (off, _size) in wire.BLOCK_FIELDS.items():
        assert re.search(rf"^\s+{off}\s+{name}\b", doc, re.M), name


def test_record_fields_names_each_field_and_refuses_mismatches():
    assert wire.record_fields("<QI4xd", ("a", "b", "c")) == {"a": (0, 8), "b": (8, 4), "c": (16, 8)}
    assert wire.record_fields("<8s3q", ("s", "q")) == {"s": (0, 8), "q": (8, 24)}
    with pytest.raises(ValueError, match="little endian"):
        wire.record_fields("QI", ("a", "b"))
    with pytest.raises(ValueError, match="more names"):
        wire.record_fields("<Q", ("a", "b"))
    with pytest.raises(ValueError, match="more fields"):
        wire.record_fields("<QQ", ("a",))


class FakeSegment:
    def __init__(self, n: int) -> None:
        self.buf = bytearray(n)


def channel(slots: int = 4) -> ChannelView:
    lay = ChannelLayout(slots, 1 << 16, 1 << 16)
    seg = FakeSegment(lay.total)
    lay.write_header(memoryview(seg.buf))  # type: ignore[arg-type]
    return ChannelView(seg, lay)  # type: ignore[arg-type]


def test_a_request_published_at_one_end_is_consumed_at_the_other_by_name():
    v = channel()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensors, meta = encode_call((x, np.ones(3, np.int8)), {"tag": "a" * 300})
    align = wire.request_align(tensors)
    offsets, meta_off, nbytes = wire.block_layout(tensors, len(meta))
    assert align == 4 and offsets == [0, 48] and meta_off == 56 and nbytes == 56 + len(meta)
    base = 64
    v.requests.copy_in(base, tensors, offsets, meta, meta_off)
    pos = v.requests.publish(5, 7, 2, base, nbytes, base + meta_off, (1.5, 2.5, 0.0, 0.0, 0.0), 0,
                             tensors, [base + o for o in offsets], meta)
    assert v.get(wire.H_REQ_HEAD) == 6
    [(at, req, tmetas, meta_back)] = v.requests.consume(5)
    assert at == pos == v.req_slot(5) and v.get(wire.H_REQ_TAIL) == 6
    assert isinstance(req, RequestDesc)
    assert (req.seq, req.method, req.submit, req.deadline, req.block_off, req.block_len) == (7, 2, 1.5, 2.5, 64, nbytes)
    assert req.flags == wire.FLAG_META_IN_ARENA and meta_back == meta and req.ntensors == 2
    assert [t.shape for t in tmetas] == [(3, 4), (3,)] and tmetas[1].offset == base + 48
    got = np.ndarray(tmetas[0].shape, np.float32, v.req_arena, tmetas[0].offset)
    assert np.array_equal(got, x)
    assert v.requests.consume(6) == []
    assert not wire.is_cancelled(v.buf, pos, 7)
    v.cancel(pos, 7)
    assert v.cancelled(pos, 7) and not v.cancelled(pos, 8)  # a stale mark names another call
    assert req.cancel == 0  # read before the mark


def test_a_request_tag_round_trips_and_a_reused_slot_never_keeps_it():
    v = channel()
    pos = v.requests.publish(0, 1, 0, 0, 0, 0, (1.0, 0.0, 0.0, 0.0, 0.0), 0, [], [], b"", b"abc123")
    assert wire.read_request_tag(v.buf, pos, 1) == "abc123"
    assert wire.read_request_tag(v.buf, pos, 0) == ""  # the slot holds another call than the one asked of
    [(_, req, _, _)] = v.requests.consume(0)
    assert req.seq == 1 and req.cancel == 0  # the fixed fields around the tag are intact
    long_id = b"r" * 30 + b"-tail"
    pos = v.requests.publish(0, 2, 0, 0, 0, 0, (1.0, 0.0, 0.0, 0.0, 0.0), 0, [], [], b"", long_id)
    assert wire.read_request_tag(v.buf, pos, 2) == "r" * 24  # its first 24 bytes
    pos = v.requests.publish(0, 3, 0, 0, 0, 0, (1.0, 0.0, 0.0, 0.0, 0.0), 0, [], [], b"")
    assert v.request_tag(pos, 3) == ""  # the same slot, repacked without a tag: none
    assert bytes(v.buf[pos + 104 : pos + 128]) == bytes(24)


def test_a_response_carries_its_status_and_timeline_by_name():
    v = channel()
    tensors, meta = encode_result(np.zeros((2, 3), np.float64))
    offsets, meta_off, nbytes = wire.block_layout(tensors, len(meta), wire.RESULT_ALIGN)
    assert (offsets, meta_off, nbytes) == ([0], 48, 48)
    times = (1.0, 2.0, 3.0, 4.0, 5.0)
    v.responses.publish(0, 9, Status.OK, 128, wire.BLOCK_HEADER + nbytes, 0, times, 4, tensors, [144], meta)
    [(_, resp, tmetas, meta_back)] = v.responses.consume(0)
    assert isinstance(resp, ResponseDesc) and resp.status is not None
    assert Status(resp.status) is Status.OK and resp.seq == 9 and resp.batch_size == 4
    assert (resp.dequeue, resp.batch_start, resp.model_start, resp.model_end, resp.written) == times
    assert meta_back == b"" and tmetas[0].offset == 144 and tmetas[0].dtype == "<f8"


def test_inline_metadata_stays_in_the_descriptor():
    v = channel()
    tensors, meta = encode_call((1, "x"), {})
    assert 0 < len(meta) <= wire.META_INLINE_MAX
    offsets, meta_off, nbytes = wire.block_layout(tensors, len(meta))
    assert nbytes == 0  # nothing in the arena
    v.requests.publish(0, 1, 0, 0, 0, meta_off, (0.0,) * 5, 0, tensors, offsets, meta)  # type: ignore[arg-type]
    [(_, req, tmetas, meta_back)] = v.requests.consume(0)
    assert req.flags == 0 and meta_back == meta and tmetas == []


def test_result_tensors_and_metadata_follow_the_named_alignment():
    tensors, _ = encode_result((np.zeros(3, np.int8), np.zeros(5, np.float32)))
    offsets, meta_off, nbytes = wire.block_layout(tensors, 200, wire.RESULT_ALIGN)
    assert offsets == [0, 64] and meta_off == 88 and nbytes == 88 + 200
    offsets, meta_off, _ = wire.block_layout(tensors, 0)
    assert offsets == [0, 4] and meta_off == 24


def test_block_headers_are_written_busy_and_released_by_the_client():
    arena = bytearray(256)
    wire.write_block_header(arena, 64, 100)
    assert not wire.block_released(arena, 64)
    assert int.from_bytes(arena[72:80], "little") == 100
    wire.release_block(arena, 64)
    assert wire.block_released(arena, 64)


def test_status_values_are_the_wire_integers():
    assert [int(s) for s in Status] == list(range(len(Status)))
    assert Status(3) is Status.EXPIRED and Status.OK == 0


def test_handshake_messages_round_trip_and_refuse_bad_fields():
    attach = handshake.Attach("/shmserve_a", "/shmserve_b", 42)
    assert handshake.Attach.from_message(attach.to_message()) == attach
    assert handshake.Attach.from_message({"segment": "s", "signal": "r"}).pid == 0
    with pytest.raises(ValueError, match="segment"):
        handshake.Attach.from_message({"segment": 1, "signal": "r"})
    answer = handshake.Attached("/shmserve_d", 7, {"run": {"index": 0}})
    assert handshake.read_answer(answer.to_message()) == answer
    assert handshake.read_answer(handshake.Refused("no room").to_message()) == handshake.Refused("no room")
    with pytest.raises(ValueError, match="doorbell"):
        handshake.read_answer({"ok": True, "pid": 7, "methods": {}})
