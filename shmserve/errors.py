"""Every exception a shmserve user can see, each with the HTTP status it maps to.

Errors raised inside a runner worker travel back to the caller as text (the
exception type name, message and remote traceback), never as a pickled object.
"""
from __future__ import annotations


class ShmserveError(Exception):
    """Base class of every shmserve error."""

    http_status: int = 500


class ConfigError(ShmserveError):
    """A runner, service or configuration value is invalid."""

    http_status = 500


class SharedMemoryTooSmall(ConfigError):
    """``/dev/shm`` has less free space than the runners need; the message gives the bytes and the fixes."""

    http_status = 503


class RuntimeDirUnsafe(ConfigError, PermissionError):
    """The runtime directory is not private to this user (another user's, a symlink, writable by others)."""


class RunnerNotStarted(ShmserveError):
    """A runner method was called before `shmserve.start()`, `connect()` or `init_local()`."""

    http_status = 503


class RunnerNameClash(ShmserveError):
    """Another live process already serves a runner under this name."""

    http_status = 500


class InvalidInput(ShmserveError):
    """An argument cannot cross the transport (object dtype, unsupported type, bad shape)."""

    http_status = 400


class TensorTooLarge(InvalidInput):
    """A tensor (or a call's tensors together) exceeds the shared-memory arena."""

    http_status = 413


class RunnerError(ShmserveError):
    """The runnable's method raised. `remote_traceback` holds the worker-side traceback text."""

    http_status = 500

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

    http_status = 503


class RunnerOverloaded(ShmserveError):
    """The runner's queue is full; retry later."""

    http_status = 503


class RunnerTimeout(ShmserveError, TimeoutError):
    """The call's deadline passed before its result arrived."""

    http_status = 504


class ModelStoreError(ShmserveError):
    """The model store cannot do what was asked (bad tag, corrupt entry, clash)."""


class ModelNotFound(ModelStoreError, LookupError):
    """No model in the store matches the tag."""

    http_status = 404


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

    http_status = 503


class CudaError(ShmserveError):
    """A CUDA driver call failed; `code` is the CUresult and `name` its symbol."""

    def __init__(self, message: str, code: int = -1, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


__all__ = [
    "ShmserveError",
    "ConfigError",
    "SharedMemoryTooSmall",
    "RuntimeDirUnsafe",
    "RunnerNotStarted",
    "RunnerNameClash",
    "InvalidInput",
    "TensorTooLarge",
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
]
