"""Every exception a shmserve user can see, and the one table that maps them.

The exception tree (HTTP status in brackets; ``wire:`` names the status a runner
worker answers with when the error is raised on its side)::

    ShmserveError [500]
     ├── ConfigError [500]                a runner, service or setting is invalid
     │    ├── SharedMemoryTooSmall [503]  /dev/shm has less room than the runners need
     │    ├── RuntimeDirUnsafe [500]      the runtime directory is not private (also a PermissionError)
     │    ├── InvalidSetting [500]        a setting or SHMSERVE_* variable is out of range (also a ValueError)
     │    └── GpuUnavailable [503]        no driver, device, CuPy or CUDA build of torch
     ├── RunnerNotStarted [503]           called before start(), connect() or init_local()
     ├── RunnerNameClash [500]            another live process serves a runner of this name
     ├── BlockingCall [500]               a sync run() on a thread running an event loop (also a RuntimeError)
     ├── InvalidInput [400]               wire: BAD_REQUEST; an argument cannot cross
     │    ├── TensorTooLarge [413]        wire: TOO_LARGE; more than the arena holds
     │    ├── BodyTooLarge [413]          more JSON than the input descriptor reads in one call
     │    └── UnsupportedMediaType [415]  a Content-Type the API does not read
     ├── RunnerError [500]                wire: MODEL_ERROR; the runnable's method raised
     ├── RunnerUnavailable [503]          wire: UNAVAILABLE; no live worker, or it died
     ├── RunnerOverloaded [503]           wire: OVERLOADED; the queue ahead is too long
     ├── RunnerTimeout [504]              wire: EXPIRED; the deadline passed (also a TimeoutError)
     ├── ModelStoreError [500]            the model store cannot do what was asked
     │    ├── ModelNotFound [404]         no model matches the tag (also a LookupError)
     │    ├── CorruptModel [500]
     │    ├── UnknownFramework [500]
     │    └── ModelExists [500]
     └── CudaError [500]                  a CUDA driver call failed

`CATALOGUE` is that drawing as data: one row per exception with its HTTP
status and, where it has one, the wire status (a `shmserve.shm.wire.Status`
name: the transport imports this module, so the table names the members
rather than importing them; a test checks that every member has a row).
Each class's ``http_status`` is set from it, the runner client turns wire
statuses into exceptions with `from_wire`, and the OpenAPI document lists the
error responses of an API from it (`api_responses`). Errors raised inside a runner worker travel back to
the caller as text (the exception type name, message and remote traceback),
never as a pickled object.
"""
from __future__ import annotations

from dataclasses import dataclass


class ShmserveError(Exception):
    """Base class of every shmserve error."""

    http_status: int = 500


class ConfigError(ShmserveError):
    """A runner, service or configuration value is invalid."""


class SharedMemoryTooSmall(ConfigError):
    """``/dev/shm`` has less free space than the runners need; the message gives the bytes and the fixes."""


class RuntimeDirUnsafe(ConfigError, PermissionError):
    """The runtime directory is not private to this user (another user's, a symlink, writable by others)."""


class InvalidSetting(ConfigError, ValueError):
    """A setting or ``SHMSERVE_*`` environment variable holds a value outside what it accepts.

    The message names the setting, its limits and the value given.
    """


class RunnerNotStarted(ShmserveError):
    """A runner method was called before `shmserve.start()`, `connect()` or `init_local()`."""


class RunnerNameClash(ShmserveError):
    """Another live process already serves a runner under this name."""


class BlockingCall(ShmserveError, RuntimeError):
    """A call that waits for a runner worker was made on a thread running an event loop.

    It would stall every other request and task of that loop until the result
    came; the message names the ``await ....async_run(...)`` to use instead.
    """


class InvalidInput(ShmserveError):
    """An argument cannot cross the transport (object dtype, unsupported type, bad shape)."""


class TensorTooLarge(InvalidInput):
    """A tensor (or a call's tensors together) exceeds the shared-memory arena."""


class BodyTooLarge(InvalidInput):
    """A JSON body larger than its input descriptor reads in one call (pydantic, pandas: it would hold the loop)."""


class UnsupportedMediaType(InvalidInput):
    """The request's Content-Type is not one the API's input descriptor reads."""


class RunnerError(ShmserveError):
    """The runnable's method raised. `remote_traceback` holds the worker-side traceback text."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        base = super().__str__()
        if self.remote_traceback:
            return f"{base}\n\n--- remote traceback ---\n{self.remote_traceback}"
        return base


class RunnerUnavailable(ShmserveError):
    """No live runner worker could take the call, or the worker died while serving it."""


class RunnerOverloaded(ShmserveError):
    """The runner's queue is full; retry later."""


class RunnerTimeout(ShmserveError, TimeoutError):
    """The call's deadline passed before its result arrived."""


class ModelStoreError(ShmserveError):
    """The model store cannot do what was asked (bad tag, corrupt entry, clash)."""


class ModelNotFound(ModelStoreError, LookupError):
    """No model in the store matches the tag."""


class CorruptModel(ModelStoreError):
    """A stored model's manifest or files are unreadable or inconsistent."""


class UnknownFramework(ModelStoreError):
    """A model was saved by a framework adapter this shmserve does not have."""


class ModelExists(ModelStoreError):
    """A model with this exact tag is already in the store (e.g. importing twice)."""


class GpuUnavailable(ConfigError):
    """A GPU feature was used on a host (or in a process) that cannot provide it.

    The message names the missing piece: the NVIDIA driver (libcuda), a visible
    device, CuPy, or a CUDA build of torch.
    """


class CudaError(ShmserveError):
    """A CUDA driver call failed; `code` is the CUresult and `name` its symbol."""

    def __init__(self, message: str, code: int = -1, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


@dataclass(frozen=True)
class Entry:
    """One row of the catalogue: an exception, its HTTP status and its wire status (if any).

    `api` marks the errors an HTTP API call can answer with (listed in OpenAPI);
    `when` says, for the OpenAPI document, what leads to it; `grpc_status` is
    the gRPC status of the errors an inference call can end with (one per HTTP status).
    """

    exception: type[ShmserveError]
    http_status: int
    wire_status: str | None = None  # name of the `shmserve.shm.wire.Status` member, e.g. "BAD_REQUEST"
    api: bool = False
    when: str = ""
    grpc_status: str = ""  # name of the ``grpc.StatusCode`` a gRPC inference call ends with (shmserve.oip)


CATALOGUE: tuple[Entry, ...] = (
    Entry(ShmserveError, 500),
    Entry(ConfigError, 500),
    Entry(SharedMemoryTooSmall, 503),
    Entry(RuntimeDirUnsafe, 500),
    Entry(InvalidSetting, 500),
    Entry(GpuUnavailable, 503),
    Entry(RunnerNotStarted, 503, api=True, when="a runner is not started", grpc_status="UNAVAILABLE"),
    Entry(RunnerNameClash, 500),
    Entry(BlockingCall, 500),
    Entry(InvalidInput, 400, "BAD_REQUEST", True, "a body the input descriptor cannot read (bad JSON, wrong dtype "
                                                  "or shape), or an argument that cannot reach the runner",
          "INVALID_ARGUMENT"),
    Entry(TensorTooLarge, 413, "TOO_LARGE", True, "a tensor too large for the runner's arena", "RESOURCE_EXHAUSTED"),
    Entry(BodyTooLarge, 413, api=True, when="a JSON body larger than the input descriptor reads in one call",
          grpc_status="RESOURCE_EXHAUSTED"),
    Entry(UnsupportedMediaType, 415, api=True, when="an unsupported Content-Type", grpc_status="INVALID_ARGUMENT"),
    Entry(RunnerError, 500, "MODEL_ERROR", True, "the model raised", "INTERNAL"),
    Entry(RunnerUnavailable, 503, "UNAVAILABLE", True, "no live runner worker, retry after the Retry-After seconds",
          "UNAVAILABLE"),
    Entry(RunnerOverloaded, 503, "OVERLOADED", True, "the runner is overloaded, retry after the Retry-After seconds",
          "UNAVAILABLE"),
    Entry(RunnerTimeout, 504, "EXPIRED", True, "the call's deadline passed", "DEADLINE_EXCEEDED"),
    Entry(ModelStoreError, 500),
    Entry(ModelNotFound, 404, grpc_status="NOT_FOUND"),
    Entry(CorruptModel, 500),
    Entry(UnknownFramework, 500),
    Entry(ModelExists, 500),
    Entry(CudaError, 500),
)

#: what the HTTP server itself answers with, before or around the API function (not exceptions of the API).
HTTP_SERVER_ERRORS: dict[int, str] = {
    400: "malformed HTTP",
    408: "a request head or body that did not arrive within the server's timeouts",
    413: "a body larger than the server's --max-body-size",
    414: "a request target longer than api_server.http.max_url_size",
    431: "a request line and headers larger than api_server.http.max_header_size",
    500: "the API function raised",
    503: "more connections open than the API worker accepts",
    504: "the API function did not finish within its timeout",
}

for _entry in CATALOGUE:
    _entry.exception.http_status = _entry.http_status

_BY_WIRE: dict[str, Entry] = {e.wire_status: e for e in CATALOGUE if e.wire_status}


def from_wire(status_name: str, message: str) -> ShmserveError:
    """The exception a runner worker's failed response stands for (`status_name`: its wire status name).

    An unknown status (a newer worker) becomes a `RunnerError`.
    """
    entry = _BY_WIRE.get(status_name)
    return (entry.exception if entry is not None else RunnerError)(message)


def api_responses() -> dict[int, str]:
    """HTTP status -> what leads to it, for every error an HTTP API call can answer with (OpenAPI)."""
    causes: dict[int, list[str]] = {}
    for status, text in HTTP_SERVER_ERRORS.items():
        causes.setdefault(status, []).append(text)
    for entry in CATALOGUE:
        if entry.api:
            causes.setdefault(entry.http_status, []).append(f"{entry.when} ({entry.exception.__name__})")
    return {status: _sentence("; ".join(texts)) for status, texts in sorted(causes.items())}


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


__all__ = [
    "ShmserveError",
    "ConfigError",
    "SharedMemoryTooSmall",
    "RuntimeDirUnsafe",
    "InvalidSetting",
    "RunnerNotStarted",
    "RunnerNameClash",
    "BlockingCall",
    "InvalidInput",
    "TensorTooLarge",
    "BodyTooLarge",
    "UnsupportedMediaType",
    "RunnerError",
    "RunnerUnavailable",
    "RunnerOverloaded",
    "RunnerTimeout",
    "ModelStoreError",
    "ModelNotFound",
    "CorruptModel",
    "UnknownFramework",
    "ModelExists",
    "GpuUnavailable",
    "CudaError",
    "CATALOGUE",
    "Entry",
    "HTTP_SERVER_ERRORS",
    "api_responses",
    "from_wire",
]
