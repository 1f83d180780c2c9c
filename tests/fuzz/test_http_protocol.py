"""Property tests (hypothesis) of `HttpProtocol` fed through a fake transport.

However a byte stream is split into reads, the answers are the same; whatever
bytes arrive, the protocol never raises, answers with well-formed responses
only, and closes after any error.
"""
from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_decoders import settings  # noqa: F401  (loads the ci/long profile)
from tests.unit.test_http_protocol import make, responses

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
header = st.tuples(token, st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 =;,./", max_size=20))


@st.composite
def requests_(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT"]))
    path = "/" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/?=&%", max_size=30))
    body = draw(st.binary(max_size=80))
    headers = [f"{k}: {v}" for k, v in draw(st.lists(header, max_size=4))
               if k not in ("content-length", "transfer-encoding", "connection", "upgrade", "expect")]
    if draw(st.booleans()) and body:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + "".join(h + "\r\n" for h in headers)
                + "\r\n").encode() + chunks + b"0\r\n\r\n"
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode() + body


def _feed(stream: bytes, cuts: list[int], **limits: int) -> tuple[bytes, bool, list]:
    proto, tr, app, state = make(**limits)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:]):
        if b > a:
            proto.data_received(stream[a:b])
    state.tick(time.monotonic())
    return tr.data, tr.closed, [(r.method, r.url, r.body) for r in app.requests]


@given(reqs=st.lists(requests_(), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_answers_do_not_depend_on_how_the_stream_is_split(reqs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(reqs)
    whole = _feed(stream, [])
    split = _feed(stream, cuts)
    assert _undated(split) == _undated(whole)  # the two feeds may straddle a second: their Date headers differ
    assert len(responses(whole[0])) == len(reqs) == len(whole[2])


@given(reqs=st.lists(requests_(), min_size=1, max_size=3), cuts=st.lists(st.integers(0, 10_000), max_size=12),
       url=st.integers(8, 64), head=st.integers(40, 200))
def test_limits_hold_however_the_stream_is_split(reqs, cuts, url: int, head: int) -> None:
    stream = b"".join(reqs)
    for data, closed, served in (_feed(stream, [], max_url_bytes=url, max_header_bytes=head),
                                 _feed(stream, cuts, max_url_bytes=url, max_header_bytes=head)):
        assert all(len(u) <= url for _, u, _ in served)
        statuses = [s for s, _, _ in responses(data)]
        assert statuses[:len(served)] == [200] * len(served)
        if len(served) < len(reqs):  # one was refused: by a limit, last, and the connection closed
            assert statuses[len(served):] in ([414], [431]) and closed


@given(garbage=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=8), prefix=st.sampled_from(
    [b"", b"GET / HTTP/1.1\r\n", b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]))
def test_garbage_never_raises_and_errors_close_the_connection(garbage: bytes, cuts: list[int], prefix: bytes) -> None:
    data, closed, _ = _feed(prefix + garbage, cuts, max_url_bytes=64, max_header_bytes=256, max_body_bytes=100)
    answers = responses(data)
    statuses = [s for s, _, _ in answers]
    assert all(100 <= s < 600 for s in statuses)
    errors = [i for i, s in enumerate(statuses) if s >= 400 and s not in (404, 405)]
    if errors:
        assert errors == [len(statuses) - 1]  # nothing after the first protocol error
        assert closed and answers[-1][1][b"connection"] == b"close"


@given(reqs=st.lists(requests_(), min_size=1, max_size=60), cuts=st.lists(st.integers(0, 20_000), max_size=6),
       slice_=st.sampled_from([1, 7, 64, 300, 4096]))
def test_reads_parsed_in_slices_with_the_rest_kept_answer_as_one_feed(reqs: list[bytes], cuts: list[int],
                                                                      slice_: int) -> None:
    # Reads are parsed `SLICE` bytes at a time and the rest kept once the pipeline is full: whatever the
    # slice, the stream and its splits, every request is answered once, in order, as a whole feed would.
    from unittest import mock

    import shmserve.http.reader as reader

    stream = b"".join(reqs)
    with mock.patch.object(reader, "SLICE", slice_), mock.patch.object(reader, "PIPELINE_HIGH", 3):
        sliced = _undated(_feed(stream, cuts))
    whole = _undated(_feed(stream, []))
    assert sliced == whole
    assert len(whole[0]) == len(reqs) == len(whole[2])


def _undated(fed: tuple[bytes, bool, list]) -> tuple[list, bool, list]:
    """`_feed`'s result with its answers parsed, less their Date headers (two feeds may straddle a second)."""
    answers = [(s, {k: v for k, v in h.items() if k != b"date"}, b) for s, h, b in responses(fed[0])]
    return answers, fed[1], fed[2]
