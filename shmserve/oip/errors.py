"""`InferError`: a v2 request that fails, with the HTTP status it is answered with.

REST answers ``{"error": message}`` with `status`; gRPC maps the status to a
gRPC code with `grpc_code_name`.
"""
from __future__ import annotations

__all__ = ["InferError", "status_of"]

_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED", 501: "UNIMPLEMENTED"}


class InferError(Exception):
    """A v2 request failed; `status` is its HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def grpc_code_name(self) -> str:
        """Name of the ``grpc.StatusCode`` member for this status."""
        return _GRPC_CODES.get(self.status, "INTERNAL")


def status_of(exc: BaseException) -> InferError:
    """`exc` as an `InferError`: shmserve errors keep their HTTP status, timeouts are 504, others 500."""
    if isinstance(exc, InferError):
        return exc
    from ..errors import ShmserveError

    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    message = message or type(exc).__name__
    if isinstance(exc, ShmserveError):
        # RunnerError's str() carries the worker traceback: send the first line only.
        return InferError(exc.http_status, f"{type(exc).__name__}: {message}")
    if isinstance(exc, TimeoutError):
        return InferError(504, f"the call did not finish in time: {message}")
    return InferError(500, f"{type(exc).__name__}: {message}")
