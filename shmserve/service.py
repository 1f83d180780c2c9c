"""`Service`: HTTP APIs over runners.

::

    runner = shmserve.Runner(MLPRunnable, name="mlp")
    svc = shmserve.Service("mlp_service", runners=[runner])

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(x):
        return await runner.predict.async_run(x)

Serve it with ``shmserve serve module:svc``. An API function takes one
argument, the request body decoded by its input descriptor, and returns what
its output descriptor encodes; a second parameter named ``ctx`` (or annotated
``shmserve.Context``) gets the request's `shmserve.Context`.
``@svc.on_startup`` / ``@svc.on_shutdown`` functions run once per API worker. Async API functions run on the API worker's
event loop; plain functions run in a thread pool so that they never block it.
Exceptions map to HTTP statuses through their ``http_status`` (see
`shmserve.errors`); any other exception is a 500.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError
from .io import IODescriptor
from .runner import Runner, check_models

F = TypeVar("F", bound=Callable[..., Any])

#: Routes the HTTP server answers itself; an API may not take them.
RESERVED_ROUTES = frozenset({"/livez", "/readyz", "/metrics", "/docs.json"})

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_ROUTE_RE = re.compile(r"^/[A-Za-z0-9_.~/-]*$")


@dataclass(frozen=True)
class API:
    """One HTTP API: ``POST route`` decodes with `input`, calls `func`, encodes with `output`."""

    name: str
    route: str
    func: Callable[..., Any]
    input: IODescriptor
    output: IODescriptor
    is_async: bool
    doc: str = ""
    timeout: float | None = None
    #: the parameter that receives a `shmserve.Context`, when the function declares one
    ctx_param: str | None = None
    #: an async generator function: its items are streamed (see `shmserve.http.stream`)
    streams: bool = False
    route_bytes: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "route_bytes", self.route.encode("ascii"))


class Service:
    """A named set of HTTP APIs and the runners they call.

    Args:
        name: the service name (shown in the OpenAPI document and metrics).
        runners: every runner the APIs call; ``shmserve serve`` starts them.
        models: stored models the APIs use directly (not through a runner);
            kept on ``svc.models`` so tools see every model the service needs.
    """

    def __init__(self, name: str, runners: Iterable[Runner] | None = None, models: Iterable[Any] | None = None) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"invalid service name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter")
        self.name = name
        self.runners: list[Runner] = []
        seen: set[str] = set()
        for runner in runners or ():
            if not isinstance(runner, Runner):
                raise ConfigError(f"Service {name!r}: runners must be shmserve.Runner objects, got {runner!r}")
            if runner.name in seen:
                raise ConfigError(
                    f"Service {name!r} has two runners named {runner.name!r}; give each Runner a distinct name="
                )
            seen.add(runner.name)
            self.runners.append(runner)
        self.apis: dict[str, API] = {}
        self.models = check_models(models, f"Service {name!r}")
        self.startup_hooks: list[Callable[..., Any]] = []
        self.shutdown_hooks: list[Callable[..., Any]] = []

    def on_startup(self, func: F) -> F:
        """Run `func` once in each API worker before it serves (sync or async).

        If it takes an argument it gets a `shmserve.Context` (``ctx.state`` is the
        worker's shared state). An exception fails the server's start, with its
        traceback.
        """
        self.startup_hooks.append(_hook(func, "on_startup"))
        return func

    def on_shutdown(self, func: F) -> F:
        """Run `func` once in each API worker after it stopped serving (sync or async).

        Takes a `shmserve.Context` like `on_startup`; an exception is logged and
        the remaining hooks still run.
        """
        self.shutdown_hooks.append(_hook(func, "on_shutdown"))
        return func

    def api(
        self,
        input: IODescriptor,
        output: IODescriptor,
        *,
        name: str | None = None,
        route: str | None = None,
        doc: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as ``POST /<name>`` (or ``route``).

        `timeout` (seconds), when given, bounds the whole call; past it the client
        gets HTTP 504. The decorated function is returned unchanged.
        """
        if not isinstance(input, IODescriptor) or not isinstance(output, IODescriptor):
            raise ConfigError("svc.api(input=..., output=...) need IO descriptors such as shmserve.io.NumpyNdarray()")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"svc.api timeout must be a positive number of seconds, got {timeout!r}")

        def register(func: F) -> F:
            if not callable(func):
                raise ConfigError(f"svc.api decorates a function, got {func!r}")
            api_name = name if name is not None else func.__name__
            if not _NAME_RE.match(api_name):
                raise ConfigError(f"invalid API name {api_name!r}: use letters, digits, '_', '.' or '-'")
            api_route = route if route is not None else "/" + api_name
            if not _ROUTE_RE.match(api_route):
                raise ConfigError(f"invalid route {api_route!r} for API {api_name!r}: it must start with '/' and use URL-safe characters")
            if api_route in RESERVED_ROUTES:
                raise ConfigError(f"route {api_route!r} of API {api_name!r} is reserved by the server; pick another route=")
            if api_name in self.apis:
                raise ConfigError(f"Service {self.name!r} already has an API named {api_name!r}")
            for other in self.apis.values():
                if other.route == api_route:
                    raise ConfigError(f"APIs {other.name!r} and {api_name!r} both use route {api_route!r}")
            self.apis[api_name] = API(
                name=api_name,
                route=api_route,
                func=func,
                input=input,
                output=output,
                is_async=inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func),
                streams=inspect.isasyncgenfunction(func),
                doc=doc if doc is not None else inspect.getdoc(func) or "",
                timeout=float(timeout) if timeout is not None else None,
                ctx_param=_context_parameter(func),
            )
            return func

        return register

    def __repr__(self) -> str:
        return f"<Service {self.name!r} apis={sorted(self.apis)} runners={[r.name for r in self.runners]}>"


def _hook(func: Any, what: str) -> Callable[..., Any]:
    if not callable(func):
        raise ConfigError(f"svc.{what} decorates a function, got {func!r}")
    return func  # type: ignore[no-any-return]


def _context_parameter(func: Callable[..., Any]) -> str | None:
    """The name of the parameter an API function takes its `Context` in: ``ctx``, ``context``, or
    one annotated ``Context``; None when it takes none."""
    try:
        params = list(inspect.signature(func).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    for p in params:
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        if p.name in ("ctx", "context") or annotation.rsplit(".", 1)[-1] == "Context":
            return p.name
    return None


def load_service(spec: str) -> Service:
    """Import ``"module:attr"`` (``attr`` defaults to ``svc``) and return the Service it names.

    The caller decides ``sys.path``; ``shmserve serve`` puts the working directory first.
    """
    import importlib

    module_name, _, attr = spec.partition(":")
    attr = attr or "svc"
    if not module_name:
        raise ConfigError(f"service {spec!r} must look like 'module:svc' or 'package.module:svc'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import service module {module_name!r}: run from the folder that holds it, or give a dotted path"
            ) from exc
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}; name the Service object after the ':'") from None
    if not isinstance(obj, Service):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not a shmserve.Service")
    return obj
