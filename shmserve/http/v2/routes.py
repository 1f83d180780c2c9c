"""`V2Routes`: every path under ``/v2`` of the Open Inference Protocol's REST binding.

| method | path | answer |
| --- | --- | --- |
| GET | ``/v2`` | server metadata (name, version, extensions) |
| GET | ``/v2/health/live``, ``/v2/health/ready`` | 200, or 503 while a runner has no live worker |
| GET | ``/v2/models/{m}[/versions/{v}]`` | model metadata |
| GET | ``/v2/models/{m}[/versions/{v}]/ready`` | 200 ready, 503 not ready |
| GET | ``/v2/models/{m}[/versions/{v}]/config`` | a small model configuration (name, max_batch_size, tensors) |
| POST | ``/v2/models/{m}[/versions/{v}]/infer`` | inference (JSON tensors, binary tensor data, shared memory) |
| GET | ``/v2/models[/{m}[/versions/{v}]]/stats`` | statistics extension |
| POST | ``/v2/repository/index`` | model repository extension: every model and its state |
| GET/POST | ``/v2/systemsharedmemory[/region/{r}]/{status,register,unregister}`` | system shared memory |
| GET | ``/v2/cudasharedmemory[...]/status`` | always an empty list: CUDA regions are not offered |

Errors are ``{"error": "..."}`` with the status that says who is at fault (400
bad request, 404 unknown model, 405 wrong method, 413/415 body, 500 the model
raised, 503 overloaded or restarting, 504 past the request's ``timeout``).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote

import orjson

from ...jsonscan import PIECE_BYTES, run_async
from ...oip.errors import InferError
from ...oip.models import Model
from ...oip.server import InferenceServer
from ..protocol import HttpProtocol, Request
from ..request_task import start
from .codec import InferRequest, decode_request, decode_request_steps, encode_response

__all__ = ["V2Routes"]

log = logging.getLogger("shmserve.http.v2")

_CT_JSON = b"application/json"
_RETRY_AFTER = b"retry-after: 1\r\n"
_EMPTY_OK = b""
#: inference paths remembered by `V2Routes` (a model is reached by a handful of spellings)
_MAX_CACHED_PATHS = 256


def reply_json(conn: HttpProtocol, status: int, obj: Any) -> None:
    """Reply with `obj` as JSON."""
    conn.reply(status, _CT_JSON, orjson.dumps(obj))


def reply_v2_error(conn: HttpProtocol, err: InferError) -> None:
    """Reply with the protocol's error body, ``{"error": message}``."""
    conn.reply(err.status, _CT_JSON, orjson.dumps({"error": err.message}), _RETRY_AFTER if err.status == 503 else b"")


class V2Routes:
    """Answers ``/v2/...`` requests for one `InferenceServer` (see the module docstring)."""

    def __init__(self, server: InferenceServer, max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self.server = server
        self.max_body_bytes = max_body_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        # Request path -> model, for the inference paths resolved so far: a client sends the same
        # path again and again, and splitting and unquoting it each time is a tenth of the v2 layer's
        # cost per request. Only paths that named a model are kept (the models are fixed at start),
        # at most _MAX_CACHED_PATHS of them, so no request can grow it without bound.
        self._infer_paths: dict[bytes, Model] = {}

    # -- dispatch ----------------------------------------------------------------
    def dispatch(self, request: Request, conn: HttpProtocol) -> None:
        """Answer `request` (its path starts with ``/v2``) now, or from a task."""
        try:
            model = self._infer_paths.get(request.path) if request.method == b"POST" else None
            if model is not None:
                self._infer_request(model, request, conn)
            else:
                self._route(request, conn)
        except InferError as err:
            reply_v2_error(conn, err)

    def _route(self, request: Request, conn: HttpProtocol) -> None:
        parts = [unquote(p.decode("latin-1")) for p in request.path.split(b"/")[2:]]
        if parts and parts[-1] == "":
            parts.pop()  # a trailing slash
        method = request.method
        if not parts:
            self._need(method, b"GET", request)
            return reply_json(conn, 200, self.server.metadata())
        head = parts[0]
        if head == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            self._need(method, b"GET", request)
            if parts[1] == "live":
                return conn.reply(200, _CT_JSON, _EMPTY_OK)
            return self._task(conn, self._health_ready(conn))
        if head == "models":
            return self._models(parts[1:], request, conn)
        if head == "repository":
            if parts[1:] == ["index"]:
                self._need(method, b"POST", request)
                return self._task(conn, self._index(conn))
            if len(parts) == 4 and parts[1] == "models" and parts[3] in ("load", "unload"):
                raise InferError(400, f"{parts[3]} is not supported: a Service's models are fixed when "
                                      "`shmserve serve` starts")
        if head == "systemsharedmemory":
            return self._regions(parts[1:], request, conn)
        if head == "cudasharedmemory":
            if parts[-1] == "status" and method == b"GET":
                return reply_json(conn, 200, [])
            raise InferError(400, "CUDA shared memory regions are not supported by this server; "
                                  "use system shared memory (/v2/systemsharedmemory) or binary tensor data")
        raise InferError(404, f"no v2 route {request.path.decode('latin-1')!r}")

    @staticmethod
    def _need(method: bytes, want: bytes, request: Request) -> None:
        if method != want:
            raise InferError(405, f"{request.path.decode('latin-1')} accepts {want.decode()} only")

    def _task(self, conn: HttpProtocol, coro: Awaitable[None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        start(self._guard(conn, coro), loop, conn)

    @staticmethod
    async def _guard(conn: HttpProtocol, coro: Awaitable[None]) -> None:
        try:
            await coro
        except InferError as err:
            reply_v2_error(conn, err)
        except Exception as exc:  # a bug here loses the request, not the worker
            log.exception("v2 request failed")
            reply_v2_error(conn, InferError(500, f"{type(exc).__name__}: {exc}"))

    # -- models ------------------------------------------------------------------
    def _models(self, parts: list[str], request: Request, conn: HttpProtocol) -> None:
        method = request.method
        if parts == ["stats"]:
            self._need(method, b"GET", request)
            return reply_json(conn, 200, {"model_stats": self.server.statistics()})
        if not parts:
            raise InferError(404, "name a model: /v2/models/{name}; POST /v2/repository/index lists them")
        name, rest = parts[0], parts[1:]
        version = ""
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        model = self.server.models.get(name, version)
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "infer":
            self._need(method, b"POST", request)
            if len(self._infer_paths) < _MAX_CACHED_PATHS:
                self._infer_paths[request.path] = model
            return self._infer_request(model, request, conn)
        if action == "":
            self._need(method, b"GET", request)
            return reply_json(conn, 200, model.metadata())
        if action == "ready":
            self._need(method, b"GET", request)
            return self._task(conn, self._model_ready(conn, model))
        if action == "stats":
            self._need(method, b"GET", request)
            return reply_json(conn, 200, {"model_stats": self.server.statistics(name, version)})
        if action == "config":
            self._need(method, b"GET", request)
            return reply_json(conn, 200, {
                "name": model.name, "platform": model.platform, "max_batch_size": model.max_batch_size,
                "input": [{"name": t.name, "data_type": t.datatype, "dims": list(t.shape)} for t in model.inputs],
                "output": [{"name": t.name, "data_type": t.datatype, "dims": list(t.shape)} for t in model.outputs],
            })
        raise InferError(404, f"no v2 route {request.path.decode('latin-1')!r}")

    def _infer_request(self, model: Model, request: Request, conn: HttpProtocol) -> None:
        if len(request.body) > PIECE_BYTES or b"content-encoding" in request.headers:
            # decoded in steps, other requests served in between
            return self._task(conn, self._decode_and_infer(conn, model, request))
        req = decode_request(request.body, request.headers, self.server.regions, self.max_body_bytes)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        start(self._infer(conn, model, req), loop, conn)  # its first step now, within this call

    async def _decode_and_infer(self, conn: HttpProtocol, model: Model, request: Request) -> None:
        steps = decode_request_steps(request.body, request.headers, self.server.regions, self.max_body_bytes)
        await self._infer(conn, model, await run_async(steps))

    async def _infer(self, conn: HttpProtocol, model: Model, req: InferRequest) -> None:
        """Call the model and reply; `_guard`'s error handling inline (one coroutine per request, not two)."""
        try:
            outputs = await self.server.infer(model, req.inputs, req.parameters, req.outputs)
            ctype, body, extra = encode_response(model.name, model.version, req, outputs, self.server.regions)
        except InferError as err:
            return reply_v2_error(conn, err)
        except Exception as exc:  # a bug here loses the request, not the worker
            log.exception("v2 request failed")
            return reply_v2_error(conn, InferError(500, f"{type(exc).__name__}: {exc}"))
        conn.reply(200, ctype, body, extra)

    async def _health_ready(self, conn: HttpProtocol) -> None:
        if await self.server.server_ready():
            conn.reply(200, _CT_JSON, _EMPTY_OK)
        else:
            reply_v2_error(conn, InferError(503, "not ready: a runner has no live worker (starting or restarting)"))

    async def _model_ready(self, conn: HttpProtocol, model: Any) -> None:
        if await self.server.model_ready(model):
            conn.reply(200, _CT_JSON, _EMPTY_OK)
        else:
            reply_v2_error(conn, InferError(503, f"model {model.name!r} is not ready: its runner has no live worker"))

    async def _index(self, conn: HttpProtocol) -> None:
        reply_json(conn, 200, await self.server.index())

    # -- system shared memory -------------------------------------------------------
    def _regions(self, parts: list[str], request: Request, conn: HttpProtocol) -> None:
        name = ""
        if len(parts) >= 2 and parts[0] == "region":
            name, parts = parts[1], parts[2:]
        action = parts[0] if len(parts) == 1 else None
        table = self.server.regions
        if action == "status":
            self._need(request.method, b"GET", request)
            return reply_json(conn, 200, table.status(name) if table is not None else [])
        if action not in ("register", "unregister"):
            raise InferError(404, f"no v2 route {request.path.decode('latin-1')!r}")
        self._need(request.method, b"POST", request)
        if table is None:
            raise InferError(400, "client shared memory is off on this server; start it with --allow-client-shm")
        if action == "unregister":
            table.unregister(name)
            return conn.reply(200, _CT_JSON, _EMPTY_OK)
        try:
            body = orjson.loads(request.body) if request.body else {}
        except orjson.JSONDecodeError as exc:
            raise InferError(400, f"register body is not valid JSON ({exc})") from None
        if not name:
            raise InferError(400, "register needs a region name: POST /v2/systemsharedmemory/region/{name}/register")
        if not isinstance(body, dict):
            raise InferError(400, 'register body must be {"key": ..., "offset": ..., "byte_size": ...}')
        table.register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
        conn.reply(200, _CT_JSON, _EMPTY_OK)


