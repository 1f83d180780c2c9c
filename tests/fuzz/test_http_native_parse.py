"""Property tests (hypothesis): the C parser of the plain request and httptools answer every stream the same.

Streams are drawn near the plain case (shmserve/_native/http.c) and just off
it: odd methods, targets, versions, header names and values, the headers whose
meaning the reader acts on, bad lengths, bare LF. Fed with the accelerator and
without it, split the same way, the application must see the same requests and
the client the same bytes (tests/unit/test_http_native_parse.py pins the cases).
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_decoders import settings  # noqa: F401  (loads the ci/long profile)
from tests.unit.test_http_native_parse import NATIVE, _run

pytestmark = pytest.mark.skipif(NATIVE is None, reason="shmserve._native._http not built (or pure Python forced)")

_odd = st.sampled_from([b"", b" ", b"\t", b"\x00", b"\x7f", b"\x80", b"\r", b"\n", b"\"", b"#", b"*", b",", b"(", b":"])
_name = st.one_of(
    st.sampled_from([b"Host", b"content-length", b"Content-Length", b"CONNECTION", b"connection", b"Expect",
                     b"Transfer-Encoding", b"Upgrade", b"Proxy-Connection", b"content-type", b"X-Request-ID"]),
    st.binary(min_size=0, max_size=6).map(lambda b: b"x-" + b),
    st.text(alphabet="abcXYZ019-_!~", min_size=1, max_size=8).map(str.encode))
_value = st.one_of(
    st.sampled_from([b"keep-alive", b"Keep-Alive", b"close", b"upgrade", b"keep-alive, close", b"100-continue",
                     b"chunked", b"0", b"3", b"007", b" 3", b"3 ", b"-1", b"3x", b"", b"99999999999999999999"]),
    st.lists(st.one_of(st.text(alphabet="abc =;,/", max_size=4).map(str.encode), _odd), max_size=4).map(b"".join))


@st.composite
def request(draw) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"get",
                                   b"CONNECT", b"FOO", b"G"]))
    target = draw(st.one_of(st.text(alphabet="abc/?=&%#~", max_size=12).map(lambda t: b"/" + t.encode()),
                            st.lists(st.one_of(st.just(b"a"), _odd), max_size=3).map(lambda p: b"/" + b"".join(p)),
                            st.sampled_from([b"*", b"http://h/p", b""])))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1"]))
    sep = draw(st.sampled_from([b" "] * 6 + [b"  ", b"\t"]))
    eol = draw(st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r"]))
    body = draw(st.binary(max_size=12))
    headers = draw(st.lists(st.tuples(_name, st.sampled_from([b": ", b":", b":  ", b":\t", b" :"]), _value),
                            max_size=4))
    framing = draw(st.sampled_from(["length", "length", "none", "chunked", "wrong"]))
    lines = [method + sep + target + b" " + version] + [n + s + v for n, s, v in headers]
    if framing == "length" or (framing == "wrong" and body):
        lines.append(b"Content-Length: %d" % (len(body) + (framing == "wrong")))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "none":
        body = b""
    return draw(st.sampled_from([b"", b"\r\n"])) + eol.join(lines) + eol + eol + body


_plain = st.builds(lambda path, body: b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                   % (path.encode(), len(body), body), st.text(alphabet="abc", max_size=5), st.binary(max_size=20))


@given(reqs=st.lists(st.one_of(_plain, request()), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 600), max_size=6),
       limits=st.sampled_from([{}, {"max_url_bytes": 8}, {"max_header_bytes": 60}, {"max_body_bytes": 6}]))
def test_the_c_parser_and_httptools_answer_every_stream_the_same(reqs: list[bytes], cuts: list[int], limits: dict) -> None:
    stream = b"".join(reqs)
    with pytest.MonkeyPatch.context() as mp:
        native = _run(stream, cuts, True, mp, **limits)
        pure = _run(stream, cuts, False, mp, **limits)
    assert native == pure
