"""Service surface in process: startup/shutdown hooks, Context, and the media IO descriptors."""
from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pandas as pd
import pydantic
import pytest
from PIL import Image as PILImage

import shmserve
from shmserve.http.app import App
from shmserve.http.openapi import build_openapi
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON, File, Image, Multipart, NumpyNdarray, PandasDataFrame, Text
from tests.unit.test_http_app import _complete
from tests.unit.test_http_protocol import FakeTransport, post, responses


def exchange(svc: shmserve.Service, raw: bytes, startup: bool = True) -> tuple[int, dict[bytes, bytes], bytes]:
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(2)
    app = App(svc, executor=executor)
    proto = HttpProtocol(app, ServerState(max_body_bytes=1 << 22))
    tr = FakeTransport()
    proto.connection_made(tr)

    async def run() -> None:
        if startup:
            await app.startup()
        proto.data_received(raw)
        for _ in range(1000):
            if _complete(tr.data) >= 1:
                break
            await asyncio.sleep(0.005)
        await app.shutdown()

    try:
        loop.run_until_complete(run())
    finally:
        executor.shutdown()
        loop.close()
    (got,) = responses(tr.data)
    return got


def png(img: PILImage.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


# -- hooks and Context -----------------------------------------------------------------
def test_startup_and_shutdown_hooks_sync_and_async_share_state():
    svc = shmserve.Service("hooks")
    seen: list[str] = []

    @svc.on_startup
    def load(ctx):
        ctx.state["model"] = "loaded"
        seen.append("sync-start")

    @svc.on_startup
    async def warm():
        seen.append("async-start")

    @svc.on_shutdown
    async def bye(ctx):
        seen.append(f"stop:{ctx.state['model']}")

    @svc.api(input=JSON(), output=JSON())
    def which(body, ctx: shmserve.Context):
        return ctx.state["model"]

    status, _, body = exchange(svc, post(b"/which", b"{}"))
    assert status == 200 and orjson.loads(body) == "loaded"
    assert seen == ["sync-start", "async-start", "stop:loaded"]


def test_failing_startup_hook_raises_and_later_hooks_do_not_run():
    svc = shmserve.Service("bad")
    ran: list[int] = []

    @svc.on_startup
    def boom():
        raise RuntimeError("cannot load the model")

    @svc.on_startup
    def never():
        ran.append(1)

    app = App(svc)
    with pytest.raises(RuntimeError, match="cannot load"):
        asyncio.run(app.startup())
    assert ran == []


def test_context_request_and_response():
    svc = shmserve.Service("ctx")

    @svc.api(input=JSON(), output=JSON())
    async def echo(body, ctx):
        ctx.response.status_code = 201
        ctx.response.headers["X-Model"] = "v2"
        ctx.response.set_cookie("session", "abc", max_age=60, httponly=True)
        r = ctx.request
        return {"user": r.headers.get("X-User"), "path": r.path, "page": r.query.get("page"),
                "tags": r.query_params.get("tag"), "method": r.method}

    status, headers, body = exchange(svc, post(b"/echo?page=2&tag=a&tag=b", b"{}", b"X-User: ann\r\n"))
    assert status == 201 and headers[b"x-model"] == b"v2"
    assert headers[b"set-cookie"].startswith(b"session=abc") and b"HttpOnly" in headers[b"set-cookie"]
    assert orjson.loads(body) == {"user": "ann", "path": "/echo", "page": "2", "tags": ["a", "b"], "method": "POST"}


def test_context_refuses_header_injection():
    svc = shmserve.Service("inj")

    @svc.api(input=JSON(), output=JSON())
    def bad(body, ctx):
        ctx.response.headers["x-evil"] = "a\r\nset-cookie: x=1"
        return 1

    status, headers, body = exchange(svc, post(b"/bad", b"{}"))
    assert status == 500 and b"line break" in body and b"set-cookie" not in headers


# -- Image ---------------------------------------------------------------------------
def image_service() -> shmserve.Service:
    svc = shmserve.Service("img")

    @svc.api(input=Image(allowed_mime_types=["image/png"]), output=Image(mime_type="image/png"))
    def mirror(img):
        return img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)

    @svc.api(input=Image(pilmode="L"), output=JSON())
    def mode(img):
        return [img.mode, list(img.size)]

    return svc


def test_image_in_and_out():
    img = PILImage.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "RGB")
    status, headers, body = exchange(image_service(), post(b"/mirror", png(img), b"Content-Type: image/png\r\n"))
    assert status == 200 and headers[b"content-type"] == b"image/png"
    np.testing.assert_array_equal(np.asarray(PILImage.open(io.BytesIO(body))), np.asarray(img)[:, ::-1])
    status, _, body = exchange(image_service(), post(b"/mode", png(img, "JPEG"), b"Content-Type: image/jpeg\r\n"))
    assert status == 200 and orjson.loads(body) == ["L", [4, 2]]


@pytest.mark.parametrize("body, ctype, status, says", [
    (b"not an image", b"image/png", 400, b"not an image"),
    (png(PILImage.effect_noise((64, 64), 50))[:-30], b"image/png", 400, b"could not be decoded"),
    (png(PILImage.new("RGB", (2, 2)), "JPEG"), b"image/png", 400, b"image/jpeg"),
    (png(PILImage.new("RGB", (2, 2))), b"image/jpeg", 415, b"image/png"),
])
def test_image_bad_input(body, ctype, status, says):
    got, _, text = exchange(image_service(), post(b"/mirror", body, b"Content-Type: " + ctype + b"\r\n"))
    assert got == status and says in text


# -- File, Multipart -------------------------------------------------------------------
def test_file_and_multipart():
    svc = shmserve.Service("files")

    @svc.api(input=File(), output=File(mime_type="text/plain"))
    def upper(f):
        return io.BytesIO(f.read().upper())

    @svc.api(input=Multipart(meta=JSON(), arr=NumpyNdarray(dtype="float32"), note=Text()), output=JSON())
    def form(parts):
        return {"meta": parts["meta"], "sum": float(parts["arr"].sum()), "note": parts["note"]}

    status, headers, body = exchange(svc, post(b"/upper", b"abc", b"Content-Type: application/octet-stream\r\n"))
    assert (status, headers[b"content-type"], body) == (200, b"text/plain", b"ABC")

    ctype, form_body, _ = Multipart(meta=JSON(), arr=NumpyNdarray(), note=Text()).encode(
        {"meta": {"k": 1}, "arr": np.array([1.5, 2.5]), "note": "hi"}, b"")
    status, _, body = exchange(svc, post(b"/form", form_body, b"Content-Type: " + ctype + b"\r\n"))
    assert status == 200 and orjson.loads(body) == {"meta": {"k": 1}, "sum": 4.0, "note": "hi"}

    _, partial, _ = Multipart(meta=JSON()).encode({"meta": 1}, b"")
    status, _, body = exchange(svc, post(b"/form", partial, b"Content-Type: " + ctype + b"\r\n"))
    assert status == 400  # the boundary does not match: no parts
    ctype2, partial, _ = Multipart(meta=JSON()).encode({"meta": 1}, b"")
    status, _, body = exchange(svc, post(b"/form", partial, b"Content-Type: " + ctype2 + b"\r\n"))
    assert status == 400 and b"missing ['arr', 'note']" in body
    status, _, body = exchange(svc, post(b"/form", b"{}", b"Content-Type: application/json\r\n"))
    assert status == 415


# -- PandasDataFrame -------------------------------------------------------------------
def frame_service() -> shmserve.Service:
    svc = shmserve.Service("frames")

    @svc.api(input=PandasDataFrame(columns=["a", "b"]), output=PandasDataFrame())
    def total(df):
        return df.assign(total=df["a"] + df["b"])

    @svc.api(input=PandasDataFrame(orient="columns"), output=PandasDataFrame(orient="columns"))
    def cols(df):
        return df * 2

    return svc


def test_dataframe_json_csv_parquet():
    svc = frame_service()
    status, _, body = exchange(svc, post(b"/total", b'[{"a": 1, "b": 2}, {"a": 3, "b": 4}]'))
    assert status == 200 and orjson.loads(body) == [{"a": 1, "b": 2, "total": 3}, {"a": 3, "b": 4, "total": 7}]
    status, headers, body = exchange(svc, post(b"/total", b"a,b\n1,2\n", b"Content-Type: text/csv\r\nAccept: text/csv\r\n"))
    assert status == 200 and body.decode().splitlines() == ["a,b,total", "1,2,3"]
    buf = io.BytesIO()
    pd.DataFrame({"a": [1.5], "b": [2.0]}).to_parquet(buf)
    status, headers, body = exchange(svc, post(b"/total", buf.getvalue(),
                                               b"Content-Type: application/vnd.apache.parquet\r\n"
                                               b"Accept: application/vnd.apache.parquet\r\n"))
    assert status == 200 and pd.read_parquet(io.BytesIO(body))["total"].tolist() == [3.5]
    status, _, body = exchange(svc, post(b"/cols", b'{"x": [1, 2]}'))
    assert status == 200 and orjson.loads(body) == {"x": [2, 4]}


@pytest.mark.parametrize("path, body, says", [
    (b"/total", b'[{"a": 1}]', b"columns ['b'] are missing"),
    (b"/total", b'{"a": [1]}', b"list of row objects"),
    (b"/cols", b"[1, 2]", b"object of columns"),
    (b"/total", b"[{", b"not valid JSON"),
])
def test_dataframe_bad_input(path, body, says):
    status, _, text = exchange(frame_service(), post(path, body))
    assert status == 400 and says in text


# -- JSON(pydantic_model=) ---------------------------------------------------------------
class Order(pydantic.BaseModel):
    item: str
    qty: int = pydantic.Field(gt=0)


def test_json_pydantic_model_validates_and_documents():
    svc = shmserve.Service("orders")

    @svc.api(input=JSON(pydantic_model=Order), output=JSON(pydantic_model=Order))
    def double(order: Order) -> Order:
        return Order(item=order.item, qty=order.qty * 2)

    status, _, body = exchange(svc, post(b"/double", b'{"item": "pen", "qty": 2}'))
    assert status == 200 and orjson.loads(body) == {"item": "pen", "qty": 4}
    status, _, body = exchange(svc, post(b"/double", b'{"item": "pen", "qty": 0}'))
    assert status == 400 and b"qty" in body and b"greater than 0" in body
    doc = build_openapi(svc, "t")
    schema = doc["paths"]["/double"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["qty"]["exclusiveMinimum"] == 0


def test_docs_describe_the_media_descriptors():
    svc = shmserve.Service("docs")

    @svc.api(input=Multipart(img=Image(), meta=JSON()), output=PandasDataFrame())
    def f(parts):
        return None

    post_op = build_openapi(svc, "t")["paths"]["/f"]["post"]
    form = post_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["img", "meta"] and form["properties"]["img"]["format"] == "binary"
    assert "text/csv" in orjson.dumps(post_op).decode()
