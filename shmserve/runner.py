"""`Runner`: a named, configured Runnable, and the handles used to call it.

A Runner is only configuration until it is bound to a backend:
`shmserve.start(runner)` (worker processes over shared memory),
`shmserve.connect(name)` (attach to workers another process started) or
`runner.init_local()` (the Runnable in this process, for debugging).
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Coroutine, Iterable
from typing import Any

from .errors import ConfigError, InvalidSetting, RunnerNotStarted
from .local import LocalBackend
from .runnable import Runnable
from .runner_method import Backend, MethodConfig, RunnerMethod  # noqa: F401  (public here too)
from .strategy import Strategy, as_strategy
from .watchdog import WatchdogLimits

log = logging.getLogger("shmserve.runner")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# 16 MiB arenas make one channel 34 MiB (`shmserve.shm.budget`), so one API worker and one
# runner worker fit Docker's default 64 MiB /dev/shm with room to spare.
DEFAULT_ARENA_MB = 16
DEFAULT_TIMEOUT_S = 30.0  # the default deadline of a call (shmserve.worker.queues: admission by time)
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_LATENCY_MS = 10.0
MAX_QUEUE_SIZE = 1024  # calls one client may have in flight: each holds one of its channel's request slots


class Runner:
    """A named Runnable with its init parameters and batching settings.

    Args:
        runnable_class: the `Runnable` subclass to host.
        name: unique runner name (lowercase letters, digits, ``_.-``);
            defaults to the class name in lower case.
        runnable_init_params: keyword arguments for the Runnable's ``__init__``.
        max_batch_size: most items (counted along ``batch_dim``) joined in one call.
        max_latency_ms: longest a call may wait for a batch to form. It bounds
            batching delay only; it is not a timeout.
        method_configs: per-method overrides, e.g. ``{"predict": {"max_batch_size": 32}}``.
        workers: number of worker processes; default from the resource strategy.
        arena_mb: size of each shared-memory data arena in MiB (inputs and
            outputs each, per client process and worker; reserved and
            pre-faulted, so it is real memory: 2 x arena_mb per client process
            per worker, see `shmserve.shm.budget`). Default 16. The largest
            call or result must fit; a larger one is a clear TensorTooLarge error.
        max_queue_size: most calls one client process may have in flight;
            beyond it calls fail at once with RunnerOverloaded.
        gpus: GPU ids for this runner's workers (one worker per id unless
            `workers` says otherwise); default: every visible GPU when the
            Runnable declares ``"nvidia.com/gpu"``.
        models: the stored models (`shmserve.models.Model` objects or tags)
            this runner's Runnable loads; kept on ``runner.models`` and in the
            runner's registry record, so tools see which models it serves.
        scheduling_strategy: a `shmserve.strategy.Strategy` subclass or
            instance deciding the worker count and threads (``strategy=`` is
            the same, BentoML's older name).
        embedded: run the Runnable inside the calling process (the API worker
            under ``shmserve serve``) instead of worker processes: no shared
            memory, no batching; for cheap pre- and post-processing.
        timeout: the default deadline of a call, in seconds (default 30; None:
            none); a call's own ``timeout=`` wins, and the deadline of the API
            the call serves tightens it. A call that cannot be served before its
            deadline is refused on arrival (RunnerOverloaded, HTTP 503), one
            whose deadline passes in the queue never runs, and the caller stops
            waiting at the deadline (RunnerTimeout, HTTP 504).
        watchdog: when a worker that makes no progress is marked not ready and
            when it is restarted: a `shmserve.watchdog.WatchdogLimits` or a dict
            of its fields (``not_ready_after_s`` 5, ``slow_factor`` 20,
            ``restart_after_s`` 60).

    A deployment's ``shmserve.yaml`` (``runners:``) overrides these through
    `configure` before the runner starts (see `shmserve.config`).

    ``runner.run(...)`` / ``await runner.async_run(...)`` call the default
    method: ``__call__``, or the Runnable's only method.
    """

    def __init__(
        self,
        runnable_class: type[Runnable],
        *,
        name: str | None = None,
        runnable_init_params: dict[str, Any] | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: dict[str, dict[str, Any]] | None = None,
        workers: int | None = None,
        arena_mb: int = DEFAULT_ARENA_MB,
        max_queue_size: int = 1024,
        gpus: list[str] | None = None,
        models: Iterable[Any] | None = None,
        scheduling_strategy: type[Strategy] | Strategy | None = None,
        strategy: type[Strategy] | Strategy | None = None,
        embedded: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        watchdog: WatchdogLimits | dict[str, Any] | None = None,
    ) -> None:
        if isinstance(runnable_class, Runnable):
            raise ConfigError(f"Runner needs the Runnable class, not an instance: use Runner({type(runnable_class).__name__}, "
                              "runnable_init_params={...}) and the runner creates the instance in its worker")
        if not (isinstance(runnable_class, type) and issubclass(runnable_class, Runnable)):
            raise ConfigError(f"Runner needs a shmserve.Runnable subclass, got {runnable_class!r}")
        if name is None:
            name = runnable_class.__name__.lower()
        elif isinstance(name, str) and name != name.lower():
            warnings.warn(f"runner name {name!r} is converted to lower case: {name.lower()!r}", UserWarning, stacklevel=2)
            name = name.lower()
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(
                f"invalid runner name {name!r}: use 1-63 lowercase letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if not runnable_class.methods:
            raise ConfigError(f"{runnable_class.__name__} exposes no methods; decorate them with @shmserve.Runnable.method")
        if scheduling_strategy is not None and strategy is not None and scheduling_strategy is not strategy:
            raise ConfigError(f"runner {name!r}: give scheduling_strategy= or strategy=, not both")
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
        max_latency_ms = DEFAULT_MAX_LATENCY_MS if max_latency_ms is None else max_latency_ms
        self.runnable_class = runnable_class
        self.name = name
        self.runnable_init_params = dict(runnable_init_params or {})
        self.strategy = as_strategy(scheduling_strategy if scheduling_strategy is not None else strategy, name)
        self.embedded = bool(embedded)
        self.models = check_models(models, f"runner {name!r}")
        method_configs = dict(method_configs or {})
        unknown = set(method_configs) - set(runnable_class.methods)
        if unknown:
            raise ConfigError(f"method_configs of runner {name!r} names unknown methods {sorted(unknown)}")
        self._method_overrides = method_configs
        self.method_configs: dict[str, MethodConfig] = {}
        self._backend: Backend | None = None
        self.slow_call_ms: float | None = None  # workers log calls this long (runners.logging.slow_call_ms)
        self.configure(max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, workers=workers,
                       arena_mb=arena_mb, max_queue_size=max_queue_size, gpus=gpus, timeout=timeout,
                       watchdog=watchdog)
        #: the settings as the code gave them, before any configuration file (`shmserve config show`)
        self.code_settings: dict[str, Any] = {
            "max_batch_size": self.max_batch_size, "max_latency_ms": self.max_latency_ms, "workers": workers,
            "arena_mb": self.arena_mb, "max_queue_size": self.max_queue_size, "gpus": self.gpus, "timeout": timeout,
            "watchdog": self.watchdog.to_dict(),
        }
        for mname, cfg in self.method_configs.items():
            # `run` may be shadowed: its RunnerMethod is callable, so runner.run(x) still works.
            if mname != "run" and hasattr(self, mname):
                raise ConfigError(f"method name {mname!r} of runner {name!r} clashes with the Runner attribute "
                                  f"{mname!r} (runner.{mname} could not be both); rename the method")
            setattr(self, mname, RunnerMethod(self, cfg))

    _UNSET: Any = object()

    def configure(self, *, max_batch_size: int = _UNSET, max_latency_ms: float = _UNSET, workers: int | None = _UNSET,
                  arena_mb: int = _UNSET, max_queue_size: int = _UNSET, gpus: list[str] | None = _UNSET,
                  timeout: float | None = _UNSET,
                  watchdog: WatchdogLimits | dict[str, Any] | None = _UNSET, slow_call_ms: float | None = _UNSET) -> None:
        """Change settings before the runner starts; the arguments left out keep their values.

        A new `max_batch_size` or `max_latency_ms` applies to every method, replacing the
        ``method_configs`` of the code (a deployment's configuration outranks the code).
        """
        unset = Runner._UNSET
        name = self.name
        if self._backend is not None:
            raise ConfigError(f"runner {name!r} is already bound; configure it before starting it")
        for what, value, zero in (("max_batch_size", max_batch_size, False), ("max_latency_ms", max_latency_ms, True),
                                  ("arena_mb", arena_mb, False), ("max_queue_size", max_queue_size, False)):
            if value is not unset:
                _check_positive(what, value, name, allow_zero=zero)
        optional: tuple[tuple[str, Any], ...] = (("workers", workers), ("timeout", timeout))
        for what, value in optional:
            if value is not unset and value is not None:
                _check_positive(what, value, name)
        if max_batch_size is not unset:
            self.max_batch_size = int(max_batch_size)
        if max_latency_ms is not unset:
            self.max_latency_ms = float(max_latency_ms)
        if workers is not unset:
            self.workers = workers
        if arena_mb is not unset:
            self.arena_mb = int(arena_mb)
        if max_queue_size is not unset:
            if int(max_queue_size) > MAX_QUEUE_SIZE:
                raise InvalidSetting(
                    f"runner {name!r}: max_queue_size {max_queue_size} is above its limit of {MAX_QUEUE_SIZE} (one "
                    f"request slot of the shared-memory channel per call in flight); use at most {MAX_QUEUE_SIZE}")
            self.max_queue_size = int(max_queue_size)
        if gpus is not unset:
            self.gpus = [str(g) for g in gpus] if gpus is not None else None
        if timeout is not unset:
            self.timeout = float(timeout) if timeout is not None else None
        if watchdog is not unset:
            self.watchdog = WatchdogLimits.of(watchdog)
        if slow_call_ms is not unset:  # validated by the configuration's schema (>= 0), its only source
            self.slow_call_ms = float(slow_call_ms) if slow_call_ms is not None else None
        if self.method_configs and max_batch_size is unset and max_latency_ms is unset:
            return
        if self.method_configs:  # the configuration replaces the code's per-method batching
            self._method_overrides = {}
        for mname, cfg in _method_configs(self.runnable_class, self._method_overrides, self.max_batch_size,
                                          self.max_latency_ms, name).items():
            self.method_configs[mname] = cfg
            method = self.__dict__.get(mname)
            if isinstance(method, RunnerMethod):
                method.config = cfg

    # -- calling the default method -------------------------------------------
    @property
    def default_method(self) -> RunnerMethod:
        """The method ``runner.run`` calls (see `default_method_name`)."""
        return self.__dict__[default_method_name(self.runnable_class, self.name, list(self.method_configs))]  # type: ignore[no-any-return]

    def run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call the default method (see `default_method`) and wait for its result."""
        return self.default_method.run(*args, timeout=timeout, **kwargs)

    def async_run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """`run` from async code: ``await runner.async_run(x)`` (the call's own coroutine, no frame around it)."""
        return self.default_method.async_run(*args, timeout=timeout, **kwargs)

    # -- binding -------------------------------------------------------------
    def init_local(self, quiet: bool = False) -> None:
        """Run the Runnable inside this process (no shared memory), for debugging and tests.

        Logs a warning that this is not how to serve, unless `quiet`.
        """

        if not quiet and not self.embedded:
            log.warning("runner %r runs in-process (init_local): for debugging and tests only; serve with "
                        "shmserve.start() or `shmserve serve`", self.name)
        self.bind(LocalBackend(self))

    def bind(self, backend: Backend) -> None:
        """Serve this runner's calls through `backend`, closing the one bound before (`shmserve.start`,
        `attach` and `init_local` bind for you; a backend has ``call``, ``async_call``, ``close``)."""
        if self._backend is not None:
            self._backend.close()
        self._backend = backend

    def unbind(self) -> None:
        """Close and drop the bound backend; calls then raise RunnerNotStarted."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    _bind, _unbind = bind, unbind  # the names the runtime used before they were public

    @property
    def is_bound(self) -> bool:
        """Whether a backend serves this runner's calls."""
        return self._backend is not None

    def ready(self) -> bool:
        """Bound, and the backend's ``ready()`` (if it has one: the shared-memory backend re-attaches
        restarted workers first, so this may block briefly) says a worker can take calls."""
        probe = getattr(self._backend, "ready", None)
        return self._backend is not None and (bool(probe()) if callable(probe) else True)

    def _backend_or_raise(self) -> Backend:
        backend = self._backend
        if backend is None:
            raise RunnerNotStarted(
                f"runner {self.name!r} is not started: use `with shmserve.start(runner):`, "
                f"`shmserve.connect({self.name!r})` or `runner.init_local()`"
            )
        return backend

    def __getattr__(self, item: str) -> Any:
        # Only reached for missing attributes: give a helpful error for typos.
        if item.startswith("_"):
            raise AttributeError(item)
        raise AttributeError(
            f"runner {self.__dict__.get('name', '?')!r} has no method {item!r}; "
            f"it has {sorted(self.__dict__.get('method_configs', {}))}"
        )

    def __repr__(self) -> str:
        return f"<Runner {self.name!r} of {self.runnable_class.__name__}>"


def check_models(models: Iterable[Any] | None, owner: str) -> list[Any]:
    """The `models=` list of a Runner or Service: stored models or their tags."""
    out = list(models or ())
    for m in out:
        if not isinstance(m, str) and not (hasattr(m, "name") and hasattr(m, "version")):
            raise ConfigError(f"models of {owner} must be stored models (shmserve.models.get(...)) or tags, got {m!r}")
    return out


def _method_configs(runnable_class: type[Runnable], overrides: dict[str, dict[str, Any]], max_batch_size: int,
                    max_latency_ms: float, runner: str) -> dict[str, MethodConfig]:
    """Each method's batching settings: its ``method_configs`` entry, else the runner's."""
    out = {}
    for mname, sig in runnable_class.methods.items():
        override = dict(overrides.get(mname, {}))
        bad = set(override) - {"max_batch_size", "max_latency_ms"}
        if bad:
            raise ConfigError(f"method_configs[{mname!r}] of runner {runner!r}: unknown keys {sorted(bad)}")
        mbs = override.get("max_batch_size", max_batch_size)
        mlat = override.get("max_latency_ms", max_latency_ms)
        _check_positive("max_batch_size", mbs, runner)
        _check_positive("max_latency_ms", mlat, runner, allow_zero=True)
        out[mname] = MethodConfig(sig, int(mbs), float(mlat))
    return out


def _check_positive(what: str, value: Any, runner: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{what} of runner {runner!r} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def default_method_name(runnable_class: type, runner: str, names: list[str]) -> str:
    """Which of `names` ``runner.run`` calls: the Runnable's ``DEFAULT_METHOD`` when it names one (a
    model adapter's: the signature its stored model answers by default), else ``__call__``, else
    the only method."""
    preferred = getattr(runnable_class, "DEFAULT_METHOD", None)
    if preferred is not None and preferred not in names:
        raise ConfigError(f"{runnable_class.__name__}.DEFAULT_METHOD is {preferred!r}, which is not one "
                          f"of its methods {sorted(names)}; name one of them, or set it to None")
    for name in (preferred, "__call__", names[0] if len(names) == 1 else None):
        if name in names:
            return str(name)
    raise ConfigError(
        f"runner {runner!r} has methods {sorted(names)} and none is __call__, so runner.run() cannot pick "
        f"one; call runner.<method>.run(...), e.g. runner.{sorted(names)[0]}.run(...)"
    )
