"""Back-pressure of `HttpProtocol`: a peer that stops reading its responses stops being read.

asyncio calls ``pause_writing`` when the transport's write buffer passes its high-water mark
(the peer does not read) and ``resume_writing`` when it drains. Reading must pause in between,
or a client that pipelines requests without reading the answers makes the server buffer
responses without bound.
"""
from __future__ import annotations

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
