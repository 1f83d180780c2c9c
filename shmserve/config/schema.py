"""The schema of ``shmserve.yaml``: every key, its type, its default and what it means.

Each key is one pydantic field: its type and bounds (``ge=``, ``le=``), its
default, a ``description`` (shown by ``--help``, ``shmserve config show`` and the
README table) and, when ``shmserve serve`` has a flag for it, ``flag(...)`` in
``json_schema_extra``. Nothing else declares a default: the CLI, the supervisor,
the HTTP server and the Runner overrides all read the validated model.

Every model forbids unknown keys and is frozen, so a value read anywhere is the
value that was validated.
"""
from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .. import runner as _runner
from ..runner import Runner
from ..watchdog import WatchdogLimits

__all__ = [
    "CONFIG_VERSION", "Settings", "ShmserveConfig", "ApiServerSettings", "HttpSettings", "LoggingSettings",
    "RunnerSettings", "RunnersSettings", "BatchingSettings", "ResourceSettings", "WatchdogSettings", "flag",
    "AccessLogSettings", "CorsSettings", "AuthSettings", "MetricsSettings", "TracingSettings",
]

CONFIG_VERSION: Literal[1] = 1


class Settings(BaseModel):
    """Base of every section: unknown keys are errors, values are typed strictly and frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def flag(name: str) -> dict[str, Any]:
    """``json_schema_extra`` of a key that ``shmserve serve`` also takes as the command-line flag `name`."""
    return {"flag": name}


def _runner_default(param: str) -> Any:
    # Runner's constructor keeps the code defaults (a Runner built in Python without a config file
    # behaves the same); the schema reads them so that they are declared once.
    return inspect.signature(Runner.__init__).parameters[param].default


# -- api_server ------------------------------------------------------------------------------------

Rate = Annotated[float, Field(ge=0, le=1)]


class AccessLogSettings(Settings):
    """``api_server.logging.access``: one line per request (`shmserve.http.access_log`)."""

    enabled: bool = Field(False, description="write one line per request to the server's log")
    format: Literal["text", "json"] = Field("text", description="text (one readable line) or json (one object per line)")
    sample_rate: Rate = Field(1.0, description="fraction of requests logged; slow ones and 5xx are always logged")
    slow_ms: float = Field(1000.0, ge=0, description="a request taking at least this many ms is always logged")


class LoggingSettings(Settings):
    """``api_server.logging``: logging of the server processes."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of the supervisor and API workers", json_schema_extra=flag("--log-level"))
    access: AccessLogSettings = Field(default_factory=AccessLogSettings, description="the access log")


class CorsSettings(Settings):
    """``api_server.http.cors``: BentoML's key names (`shmserve.http.cors`)."""

    enabled: bool = Field(False, description="answer CORS preflights and add Access-Control-* headers")
    access_control_allow_origins: list[str] = Field(
        [], description="origins allowed to read responses (scheme://host[:port]), or *")
    access_control_allow_methods: list[str] = Field(
        ["GET", "POST", "OPTIONS"], description="methods a preflight may ask for, or *")
    access_control_allow_headers: list[str] = Field(
        ["*"], description="request headers a preflight may ask for, or *")
    access_control_allow_credentials: bool = Field(False, description="let browsers send cookies and credentials")
    access_control_max_age: Union[int, None] = Field(None, ge=0, description="seconds a preflight answer may be cached")
    access_control_expose_headers: list[str] = Field(
        ["x-request-id"], description="response headers a page may read")

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> "CorsSettings":
        if self.access_control_allow_credentials and "*" in self.access_control_allow_origins:
            raise ValueError("access_control_allow_credentials cannot be combined with the '*' origin "
                             "(browsers refuse it); list the allowed origins")
        return self


class AuthSettings(Settings):
    """``api_server.auth``: API keys (`shmserve.http.auth`); off while neither key is set."""

    api_key: Union[Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)], None] = Field(
        None, description="an API key clients send as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    api_keys_file: Union[str, None] = Field(None, description="file of API keys, one per line (a mounted secret)")
    protect_metrics: bool = Field(True, description="whether /metrics needs a key too (/livez, /readyz never do)")

    @property
    def enabled(self) -> bool:
        """Whether any key is configured."""
        return bool(self.api_key or self.api_keys_file)


class MetricsSettings(Settings):
    """``api_server.metrics``."""

    enabled: bool = Field(True, description="serve Prometheus metrics at /metrics")


class TracingSettings(Settings):
    """``tracing``: OpenTelemetry spans of sampled requests (`shmserve.http.tracing`; extra ``tracing``)."""

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="none, console (spans in the server's log) or otlp")
    endpoint: Union[str, None] = Field(None, description="OTLP collector URL; default: the exporter's own")
    protocol: Literal["grpc", "http"] = Field("grpc", description="OTLP transport: grpc or http (protobuf)")
    sample_rate: Rate = Field(1.0, description="fraction of requests without a sampled traceparent that are traced")
    service_name: Union[str, None] = Field(None, description="service.name of the spans; default: the Service's name")

    @property
    def enabled(self) -> bool:
        """Whether spans are exported at all."""
        return self.exporter != "none"


class HttpSettings(Settings):
    """``api_server.http``: the HTTP listener, its limits and timeouts."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (0.0.0.0 in a container)",
                      json_schema_extra=flag("--host"))
    port: int = Field(3000, ge=0, le=65535, description="port to listen on; 0 picks a free one",
                      json_schema_extra=flag("--port"))
    max_body_size: float = Field(64.0, gt=0, description="largest request body in MiB; larger ones get 413",
                                 json_schema_extra=flag("--max-body-size"))
    max_header_size: int = Field(64, ge=1, description="largest request line plus headers in KiB; larger ones "
                                 "get 431 as soon as they grow past it")
    max_url_size: int = Field(16, ge=1, description="longest request target (path and query) in KiB; longer ones "
                              "get 414 as soon as they grow past it")
    header_timeout: float = Field(10.0, gt=0, description="seconds from a request's first byte to its last header; "
                                  "later: 408 and close", json_schema_extra=flag("--header-timeout"))
    body_timeout: float = Field(60.0, gt=0, description="seconds from a request's last header to its last body "
                                "byte; later: 408 and close", json_schema_extra=flag("--body-timeout"))
    send_timeout: float = Field(30.0, gt=0, description="seconds a response may wait for the client to read it; "
                                "later the connection is aborted", json_schema_extra=flag("--send-timeout"))
    max_connections: int = Field(1000, ge=1, description="open connections per API worker; more get 503 with "
                                 "Retry-After and are closed unread", json_schema_extra=flag("--max-connections"))
    keepalive_timeout: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open",
                                     json_schema_extra=flag("--keepalive-timeout"))
    backlog: int = Field(2048, ge=1, description="listen backlog of the server socket")
    cors: CorsSettings = Field(default_factory=CorsSettings, description="CORS")

    @property
    def max_body_bytes(self) -> int:
        """`max_body_size` in bytes."""
        return int(self.max_body_size * 1024 * 1024)

    @property
    def max_header_bytes(self) -> int:
        """`max_header_size` in bytes."""
        return self.max_header_size * 1024

    @property
    def max_url_bytes(self) -> int:
        """`max_url_size` in bytes."""
        return self.max_url_size * 1024


class GrpcSettings(Settings):
    """``api_server.grpc``: the Open Inference Protocol over gRPC (needs the ``v2`` extra)."""

    port: Union[int, None] = Field(None, ge=0, le=65535, description="gRPC port, on the HTTP host; 0 picks a free "
                                   "one; unset: no gRPC", json_schema_extra=flag("--grpc-port"))
    enabled: bool = Field(True, description="serve gRPC when a port is set; false turns it off and keeps the port")


class ApiServerSettings(Settings):
    """``api_server``: the API worker processes and their supervisor."""

    workers: int = Field(1, ge=1, description="number of API worker processes sharing the port",
                         json_schema_extra=flag("--api-workers"))
    threads: int = Field(4, ge=1, description="thread pool size per API worker for non-async APIs",
                         json_schema_extra=flag("--threads"))
    startup_timeout: float = Field(60.0, gt=0, description="seconds API workers get to import the service and "
                                   "attach to the runners", json_schema_extra=flag("--startup-timeout"))
    graceful_shutdown_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get to finish "
                                             "on SIGTERM", json_schema_extra=flag("--graceful-timeout"))
    http: HttpSettings = Field(default_factory=HttpSettings, description="the HTTP listener")
    grpc: GrpcSettings = Field(default_factory=GrpcSettings, description="the v2 protocol over gRPC")
    allow_client_shm: bool = Field(False, description="v2 system shared memory: clients of the server's user may "
                                   "register their own regions and pass tensors by reference",
                                   json_schema_extra=flag("--allow-client-shm"))
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="logging")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus metrics")


# -- runners ---------------------------------------------------------------------------------------

class BatchingSettings(Settings):
    """``runners[.NAME].batching``: adaptive batching of batchable methods."""

    enabled: bool = Field(True, description="join concurrent calls into batches; false runs every call alone")
    max_batch_size: int = Field(_runner.DEFAULT_MAX_BATCH_SIZE, ge=1,
                                description="most items (along batch_dim) joined in one call")
    max_latency_ms: float = Field(_runner.DEFAULT_MAX_LATENCY_MS, ge=0,
                                  description="longest a call waits for a batch to form, in ms (not a timeout)")


_WATCHDOG = WatchdogLimits()  # its defaults, declared once in shmserve/watchdog.py


class WatchdogSettings(Settings):
    """``runners[.NAME].watchdog``: when a worker that makes no progress (a hung method, a stopped
    process) is marked not ready, and when it is killed and restarted (see `shmserve.watchdog`)."""

    not_ready_after_s: float = Field(_WATCHDOG.not_ready_after_s, gt=0,
                                     description="seconds without progress before a worker is not ready (/readyz 503)")
    slow_factor: float = Field(_WATCHDOG.slow_factor, gt=0,
                               description="a batch may run this many times its estimated cost before it counts")
    restart_after_s: float = Field(_WATCHDOG.restart_after_s, gt=0,
                                   description="seconds without progress before the worker is killed and restarted")


Cpus = Annotated[float, Field(gt=0)]
Millicores = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?m?$")]  # "500m", "2"
GpuCount = Annotated[int, Field(ge=0)]
GpuIds = list[Union[GpuCount, Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z-]+$")]]]


class ResourceSettings(Settings):
    """``runners[.NAME].resources``: what each runner may use; decides its worker count (with
    ``workers_per_resource``) and, in Kubernetes manifests, the container's requests and limits."""

    cpu: Union[Cpus, Millicores, None] = Field(
        None, description="CPUs for the runner (a number or millicores such as \"500m\")")
    nvidia_gpu: Union[GpuCount, GpuIds, None] = Field(
        None, alias="nvidia.com/gpu", description="GPUs for the runner: a count, or a list of GPU ids")


class RunnerLoggingSettings(Settings):
    """``runners[.NAME].logging``: the runner workers' log lines about calls (`shmserve.worker.call_log`)."""

    slow_call_ms: Union[float, None] = Field(
        None, ge=0, description="log a call taking at least this many ms from submit to result, with its queue "
        "wait, model time, batch size and request ID; null: off")


class RunnerSettings(Settings):
    """The settings of one runner (``runners.NAME``), and the defaults of all (``runners``)."""

    batching: BatchingSettings = Field(default_factory=BatchingSettings, description="adaptive batching")
    timeout: Union[float, None] = Field(_runner_default("timeout"), gt=0,
                                        description="default deadline of a call in seconds: refused at once (503) "
                                        "when it cannot be served by then, RunnerTimeout (504) past it; null: none")
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings, description="the watchdog of hung workers")
    logging: RunnerLoggingSettings = Field(default_factory=RunnerLoggingSettings, description="logging of calls")
    resources: ResourceSettings = Field(default_factory=ResourceSettings, description="resources")
    workers_per_resource: float = Field(1.0, gt=0, description="worker processes per CPU or GPU in resources")
    arena_mb: int = Field(_runner.DEFAULT_ARENA_MB, ge=1,
                          description="MiB of each shared-memory data arena (inputs, outputs) per channel")
    max_queue_size: int = Field(_runner_default("max_queue_size"), ge=1, le=_runner.MAX_QUEUE_SIZE,
                                description="most calls one API worker may have in flight to the runner")


class RunnersSettings(RunnerSettings):
    """``runners``: the defaults of every runner, then ``NAME: {...}`` sections that override them."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, populate_by_name=True)
    __pydantic_extra__: dict[str, RunnerSettings] = Field(init=False)  # type: ignore[assignment]


class ShmserveConfig(Settings):
    """The whole ``shmserve.yaml``."""

    version: Literal[1] = Field(CONFIG_VERSION, description="version of the configuration format")
    api_server: ApiServerSettings = Field(default_factory=ApiServerSettings, description="the API server")
    runners: RunnersSettings = Field(default_factory=RunnersSettings, description="runner defaults and overrides")
    tracing: TracingSettings = Field(default_factory=TracingSettings, description="OpenTelemetry tracing")
