"""`InferError`: a v2 request that fails, with the HTTP status it is answered with.

REST answers ``{"error": message}`` with `status`; gRPC maps the status to a
gRPC code with `grpc_code_name`, read from the error catalogue
(`shmserve.errors.CATALOGUE`, each row's ``grpc_status``), so an HTTP status
and its gRPC code are declared once.
"""
from __future__ import annotations

from ..errors import CATALOGUE, ShmserveError

__all__ = ["InferError", "status_of", "GRPC_CODES"]

#: HTTP status -> ``grpc.StatusCode`` name; a status no row names is INTERNAL
GRPC_CODES: dict[int, str] = {e.http_status: e.grpc_status for e in CATALOGUE if e.grpc_status}


class InferError(Exception):
    """A v2 request failed; `status` is its HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def grpc_code_name(self) -> str:
        """Name of the ``grpc.StatusCode`` member for this status."""
        return GRPC_CODES.get(self.status, "INTERNAL")


def status_of(exc: BaseException) -> InferError:
    """`exc` as an `InferError`: shmserve errors keep their HTTP status, timeouts are 504, others 500."""
    if isinstance(exc, InferError):
        return exc
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    message = message or type(exc).__name__
    if isinstance(exc, ShmserveError):
        # RunnerError's str() carries the worker traceback: send the first line only.
        return InferError(exc.http_status, f"{type(exc).__name__}: {message}")
    if isinstance(exc, TimeoutError):
        return InferError(504, f"the call did not finish in time: {message}")
    return InferError(500, f"{type(exc).__name__}: {message}")
