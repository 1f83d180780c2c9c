"""The HTTP application of one API worker: route, decode, call the API, encode, reply.

`App.dispatch` is called by `HttpProtocol` for each request, in order. Server
endpoints (``/livez``, ``/readyz``, ``/metrics``, ``/docs``, ``/docs.json``) and errors are
answered at once; an API call becomes one task (async APIs) or one thread-pool
job (plain functions), and replies when it finishes. A client that disconnects
cancels its task, which cancels the runner call it awaits.

Before routing, every request passes `edge` (its ID; CORS and the API key
check when enabled). After a response is written, `observe` writes the access
log line and exports the spans from the protocol's ``on_response`` hook; while
both are off the hook is not installed at all.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import orjson

from .. import traces
from ..client import request_deadline
from ..config.schema import ApiServerSettings, ShmserveConfig, TracingSettings
from ..context import Context, run_hooks
from ..oip.server import InferenceServer
from ..service import API, Service
from ..traces import Sink, call_request_id, call_traces
from .access_log import AccessLog
from .docs_ui import ASSET_PATHS, DocsUI
from .edge import V2, Edge
from .endpoints import ServerEndpoints, runner_ready
from .failures import call_failed, decode_failed, reply_failure
from .metrics import PENDING_MAX, Metrics, MetricsExchange
from .observe import Observer
from .openapi import build_openapi
from .protocol import HttpProtocol, Request
from .request_task import TASK_NAME as _TASK_NAME
from .request_task import Task as _Task
from .request_task import native_task as _native_task  # noqa: F401  (tests read it here)
from .request_task import start as _start
from .request_task import start_task as _start_task  # `dispatch` inlines `_start`
from .router import Router
from .stream import is_stream, respond_stream
from .v2 import V2Routes
from .worker_metrics import WorkerMetrics

__all__ = ["App", "runner_ready", "check_settings"]

log = logging.getLogger("shmserve.http")
traces.tagging = True  # this process serves HTTP: its runner calls carry the request's ID (`call_request_id`)

_TRACE_HEADER = b"x-shmserve-trace"
_OTHER = "-"  # metrics label for requests that match no API
_perf_counter = time.perf_counter
# Result types seen not to stream: `is_stream` asks hasattr(__aiter__), which for an ndarray raises
# and swallows an AttributeError per request; a type answers the same every time (bounded: types
# made at run time).
_PLAIN_RESULTS: set[type] = set()
_PLAIN_RESULTS_MAX = 256


def check_settings(config: ShmserveConfig) -> None:
    """Fail now, with a `ConfigError`, on what would fail in every API worker: an unreadable or empty
    API keys file, tracing without opentelemetry-sdk (or without the OTLP exporter it names)."""
    if config.api_server.auth.enabled:
        from .auth import load_keys

        load_keys(config.api_server.auth)
    if config.tracing.enabled:
        from .tracing import span_exporter

        span_exporter(config.tracing).shutdown()


class App:
    """Serves one Service's APIs; see the module docstring.

    Args:
        service: the Service whose APIs are served.
        executor: thread pool for plain-function APIs.
        version: shown in the OpenAPI document.
        ready: readiness probe; defaults to every runner being `runner_ready`.
        metrics_dir: folder shared with the other API workers of this server, so that
            ``/metrics`` shows all of them (see `shmserve.http.metrics`).
        regions: client shared-memory regions of the v2 protocol (None: the extension is off).
        settings: the ``api_server`` section of the configuration (access log, CORS, API keys, metrics).
        tracing: the ``tracing`` section.
        access_log, tracer: used instead of the ones the settings describe (tests pass their own).

    Call `close()` when done: it flushes the access log and the spans.
    """

    def __init__(
        self,
        service: Service,
        executor: Executor | None = None,
        version: str = "",
        ready: Callable[[], tuple[bool, str]] | None = None,
        metrics_dir: str | None = None,
        regions: Any = None,
        settings: ApiServerSettings | None = None,
        tracing: TracingSettings | None = None,
        access_log: AccessLog | None = None,
        tracer: Any = None,
    ) -> None:
        self.service = service
        self.executor = executor
        self.in_flight = 0
        self.settings = settings = settings or ApiServerSettings()
        exchange = MetricsExchange(metrics_dir) if metrics_dir else None
        self.metrics = Metrics(service.name, lambda: self.in_flight, exchange)
        self.metrics.registry.register(WorkerMetrics([r.name for r in service.runners]))  # type: ignore[arg-type]
        openapi = orjson.dumps(build_openapi(service, version, auth=settings.auth.enabled))
        self.endpoints = server = ServerEndpoints(service, executor, self.metrics, openapi, ready)
        self._ready = server.ready
        self._docs_ui = DocsUI(service.name)
        endpoints: dict[str, Any] = {"/livez": server.livez, "/readyz": server.readyz,
                                     "/docs": self._docs_ui.serve_page, "/docs.json": server.docs}
        if settings.metrics.enabled:
            endpoints["/metrics"] = server.metrics_page
        for path in ASSET_PATHS:
            endpoints[path] = self._docs_ui.serve_asset
        self.router = Router(service, endpoints)
        self.edge = Edge(settings)
        self.observer = Observer(settings.logging.access, tracing or TracingSettings(), service.name, access_log, tracer)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the Open Inference Protocol (``/v2/...`` here; gRPC uses the same object)
        self.inference = InferenceServer(service, executor, self.metrics, self._ready, runner_ready, version, regions)
        self._v2 = V2Routes(self.inference)
        #: one per API worker, shared by every request's Context and the startup/shutdown hooks
        self.state: dict[str, Any] = {}
        # (api, status) -> histogram, kept per API to skip a dict build per request
        self._ok_hist = {api.name: self.metrics.request_histogram(api.name, 200) for api in service.apis.values()}
        self._ok_pending = {name: h.pending for name, h in self._ok_hist.items()}
        # the APIs `_call` awaits directly: async functions without a Context, a timeout or streaming
        self._plain = frozenset(api.name for api in service.apis.values()
                                if api.is_async and not api.streams and api.timeout is None and api.ctx_param is None)

    async def startup(self) -> None:
        """Run the service's ``@svc.on_startup`` hooks (an exception propagates: the start fails)."""
        await run_hooks(self.service.startup_hooks, self.state, stop_on_error=True)

    async def shutdown(self) -> None:
        """Run the service's ``@svc.on_shutdown`` hooks (exceptions are logged)."""
        await run_hooks(self.service.shutdown_hooks, self.state, stop_on_error=False)

    @property
    def on_response(self) -> Any:
        """The hook for ``ServerState.on_response``: None while the access log and tracing are off."""
        return self.observer.hook

    def close(self) -> None:
        """Flush and stop the access log and the span exporter."""
        self.observer.close()

    # -- dispatch -------------------------------------------------------------
    def dispatch(self, request: Request, conn: HttpProtocol) -> None:
        """Answer `request` on `conn` (now, or from a task)."""
        route = self.router.resolve(request.path)
        answered = self.edge.admit(request, conn, route or V2)
        if answered:
            self.metrics.observe_request(_OTHER, answered, 0.0)
            return
        if route is None:
            if request.path.startswith(b"/v2"):
                self._v2.dispatch(request, conn)
                return
            self.metrics.observe_request(_OTHER, 404, 0.0)
            conn.reply_error(404, "NotFound", f"no route {request.path.decode('latin-1')!r}; "
                                              "see GET /docs.json for the APIs of this service")
            return
        if request.method != route.method:
            self.metrics.observe_request(_OTHER, 405, 0.0)
            conn.reply_error(405, "MethodNotAllowed",
                             f"{request.path.decode('latin-1')} accepts {route.method.decode()} only",
                             b"allow: " + route.method + b"\r\n")
            return
        api = route.api
        if api is None:
            assert route.endpoint is not None
            route.endpoint(request, conn)
            return
        start = _perf_counter()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if api.input.decode_in_steps(request.body, request.headers):
            _start(self._decode_in_steps(api, request, conn, start), loop, conn)
            return
        try:
            value = api.input.decode(request.body, request.headers)
        except Exception as exc:
            decode_failed(self.metrics, conn, api, start, exc)
            return
        call = self._serve_call if _TRACE_HEADER in request.headers or self.observer.active else self._call  # most: one frame less
        if _start_task is not None:  # `request_task.start`, inline
            _start_task(call(api, value, request, conn, start), loop, conn)
        else:
            conn.task = _Task(call(api, value, request, conn, start), loop=loop, name=_TASK_NAME)

    async def _decode_in_steps(self, api: API, request: Request, conn: HttpProtocol, start: float) -> None:
        """Decode a large body a piece at a time, other requests served in between; then call the API."""
        try:
            value = await api.input.decode_async(request.body, request.headers)
        except Exception as exc:
            decode_failed(self.metrics, conn, api, start, exc)
            return
        await self._serve_call(api, value, request, conn, start)

    def _serve_call(self, api: API, value: Any, request: Request, conn: HttpProtocol, start: float) -> Any:
        """The coroutine that calls the API: observed (access log, spans, timeline) or plain."""
        asked = _TRACE_HEADER in request.headers
        observer = self.observer
        if asked or observer.active:  # checked here: most requests are not observed, and skip the call
            ctx = observer.begin(request, api.name, asked)
            if ctx is not None:  # no wrapping coroutine: its frame would be on every resumption of the task
                return self._call(api, value, request, conn, start, ctx.timeline, asked, ctx)
        return self._call(api, value, request, conn, start)

    async def _call(self, api: API, value: Any, request: Request, conn: HttpProtocol, start: float,
                    timeline: dict[str, Any] | None = None, send_timeline: bool = False,
                    sink: Sink | None = None) -> None:
        """Call the API and answer; an observed request (access log, spans, ``X-Shmserve-Trace``) passes
        its `RequestContext`'s `timeline` and `sink`, which collects its runner calls' traces.

        A request with header ``X-Shmserve-Trace`` gets its timeline back in the
        ``x-shmserve-trace`` response header: orjson of CLOCK_MONOTONIC times
        along the path — ``begin`` (first byte parsed), ``parsed``, ``decoded``
        (body decoded into the API's argument), the runner calls' own traces
        (``runners``: submit, dequeue, batch_start, model_start, model_end,
        written, complete, batch_size, and the request's ``request_id``),
        ``api_done`` and ``encoded``; and ``request_id``.
        """
        # Counted here, not at create_task: a task cancelled before its first step never runs its finally.
        self.in_flight += 1
        ctx = None
        try:
            try:
                call_request_id.set(request.request_id)  # this request's runner calls carry its ID (this task only)
                if sink is not None:
                    call_traces.set(sink)  # this task's context only: the runner client appends to it
                if api.name in self._plain:  # most: an async function, no Context, no timeout, no stream
                    result = await api.func(value)
                else:
                    func: Callable[..., Any] = api.func
                    if api.ctx_param is not None:
                        ctx = Context.for_request(request, self.state)
                        func = functools.partial(api.func, **{str(api.ctx_param): ctx})
                    if api.timeout is not None:
                        request_deadline.set(time.monotonic() + api.timeout)  # and its deadline bounds them
                    if not api.is_async:
                        func = functools.partial(contextvars.copy_context().run, func)  # executors drop contexts
                    if api.streams:  # an async generator API: iterated below, item by item
                        result = func(value)
                    elif api.is_async:
                        if api.timeout is None:
                            result = await func(value)
                        else:
                            result = await asyncio.wait_for(func(value), api.timeout)
                    else:
                        fut = asyncio.get_running_loop().run_in_executor(self.executor, func, value)
                        result = await (fut if api.timeout is None else asyncio.wait_for(fut, api.timeout))
            except asyncio.CancelledError:
                # The client went away; nothing to answer.
                self.metrics.observe_request(api.name, 499, time.perf_counter() - start)
                raise
            except Exception as exc:
                call_failed(self.metrics, conn, api, request, start, exc)
                return
        finally:
            self.in_flight -= 1
        if timeline is not None:
            timeline["api_done"] = time.monotonic()
        kind = type(result)
        if kind not in _PLAIN_RESULTS:
            if is_stream(result):
                await respond_stream(self, api, result, request, conn, start, ctx)
                return
            if len(_PLAIN_RESULTS) < _PLAIN_RESULTS_MAX and not hasattr(kind, "__getattr__"):
                _PLAIN_RESULTS.add(kind)
        try:
            accept = request.headers.get(b"accept", b"")
            if api.output.encode_in_steps(result, accept):  # a large JSON answer: the loop is free between steps
                ctype, body, extra = await api.output.encode_async(result, accept)
            else:
                ctype, body, extra = api.output.encode(result, accept)
        except Exception as exc:  # the API returned something its output descriptor cannot write
            log.exception("API %r: encoding the result failed", api.name)
            self._fail(conn, api, start, 500, RuntimeError(
                f"API {api.name!r} returned a {type(result).__name__} that {api.output!r} cannot encode: {exc}"))
            return
        status = 200
        if ctx is not None:
            try:
                status, lines = ctx.response.render()
            except ValueError as exc:
                self._fail(conn, api, start, 500, exc)
                return
            extra += lines
        if status == 200:
            pending = self._ok_pending[api.name]  # Histogram.observe, inlined: no frame
            pending.append(_perf_counter() - start)
            if len(pending) >= PENDING_MAX:
                self._ok_hist[api.name].fold()
        else:
            self.metrics.observe_request(api.name, status, _perf_counter() - start)
        if timeline is not None:
            timeline["encoded"] = time.monotonic()
            if send_timeline:
                rid = request.request_id.decode()
                sent = {**timeline, "request_id": rid,
                        "runners": [{"runner": r, "method": m, **t, "request_id": rid} for r, m, t in call_traces.get() or ()]}
                extra += b"x-shmserve-trace: " + orjson.dumps(sent) + b"\r\n"
        conn.reply(status, ctype, body, extra)

    def _fail(self, conn: HttpProtocol, api: API, start: float, status: int, exc: BaseException) -> None:
        """Count and answer a failed request (`failures.reply_failure`; `respond_stream` calls it too)."""
        reply_failure(self.metrics, conn, api, start, status, exc)
