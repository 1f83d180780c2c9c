"""Back-pressure of `HttpProtocol`: a peer that stops reading its responses stops being read.

asyncio calls ``pause_writing`` when the transport's write buffer passes its high-water mark
(the peer does not read) and ``resume_writing`` when it drains. Reading must pause in between,
or a client that pipelines requests without reading the answers makes the server buffer
responses without bound.
"""
from __future__ import annotations

import time

from tests.unit.test_http_protocol import make, post, responses


def test_pause_writing_pauses_reading_and_resume_writing_resumes_it() -> None:
    proto, tr, app, _ = make()
    proto.data_received(post(b"/a", b"x"))
    assert not tr.paused
    proto.pause_writing()
    assert tr.paused, "the peer stopped reading but its requests are still read"
    proto.resume_writing()
    assert not tr.paused
    proto.data_received(post(b"/b", b"y"))
    assert [b for _, _, b in responses(tr.data)] == [b"POST /a x", b"POST /b y"]


def test_answering_every_queued_request_does_not_resume_reading_while_writes_are_paused() -> None:
    proto, tr, app, _ = make(defer=True)
    proto.data_received(post(b"/1", b"a") + post(b"/2", b"b"))
    proto.pause_writing()
    while app.pending:  # the queue drains, but the peer still is not reading
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", b"ok")
    assert tr.paused
    proto.resume_writing()
    assert not tr.paused


def test_resume_writing_keeps_reading_paused_while_the_pipeline_is_full() -> None:
    proto, tr, app, _ = make(defer=True)
    proto.data_received(b"".join(post(b"/%d" % i, b"") for i in range(40)))
    assert tr.paused  # too many pipelined requests queued
    proto.pause_writing()
    proto.resume_writing()
    assert tr.paused, "resume_writing resumed reading with the pipeline still full"
    while app.pending:
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", b"")
    assert not tr.paused and len(responses(tr.data)) == 40


def test_a_peer_that_stops_reading_gets_no_extension_of_its_header_deadline() -> None:
    # Reading pauses on the peer's account here (it does not read), unlike a full pipeline (ours):
    # its half-sent head still gets 408 at the deadline.
    proto, tr, app, state = make(header_timeout=10.0)
    before = time.monotonic()
    proto.data_received(post(b"/a", b"") + b"GET /b HTTP/1.1\r\nHost: x\r\n")
    after = time.monotonic()
    proto.pause_writing()
    state.tick(now=before + 10.0 - 0.01)
    assert not tr.closed
    state.tick(now=after + 10.0 + 0.01)
    got = responses(tr.data)
    assert [s for s, _, _ in got] == [200, 408] and tr.closed


def test_queued_requests_wait_while_the_peer_does_not_read_and_are_served_when_it_does() -> None:
    # A peer that pipelines many requests and stops reading: once the transport's buffer is over its
    # high-water mark, no more answers are made for it (they would only pile up in our memory).
    proto, tr, app, _ = make()
    write = tr.write

    def filling(data: bytes) -> None:
        write(data)
        if len(tr.chunks) == 5:
            proto.pause_writing()

    tr.write = filling  # type: ignore[method-assign]
    proto.data_received(b"".join(post(b"/%d" % i, b"") for i in range(20)))
    assert len(app.requests) == 5 and tr.paused
    proto.resume_writing()
    assert [r.path for r in app.requests] == [b"/%d" % i for i in range(20)]
    assert len(responses(tr.data)) == 20 and not tr.paused
