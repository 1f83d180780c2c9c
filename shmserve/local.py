"""In-process backend for `runner.init_local()`: no processes, no shared memory."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .runner import Runner


class LocalBackend:
    """Calls the Runnable's methods directly in the calling process."""

    def __init__(self, runner: "Runner") -> None:
        self.runner = runner
        self.instance = runner.runnable_class(**runner.runnable_init_params)

    def _method(self, method: str) -> Any:
        if method not in self.runner.method_configs:
            raise ConfigError(f"runner {self.runner.name!r} has no method {method!r}")
        return getattr(self.instance, method)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        return self._method(method)(*args, **kwargs)

    async def async_call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        return self._method(method)(*args, **kwargs)

    def close(self) -> None:
        self.instance = None  # type: ignore[assignment]
