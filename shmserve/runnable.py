"""The `Runnable` base class: user code that a runner worker hosts.

A Runnable declares which resources it can use and which of its methods a
runner exposes::

    class MLP(shmserve.Runnable):
        SUPPORTED_RESOURCES = ("cpu",)
        SUPPORTS_CPU_MULTI_THREADING = False

        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, x: np.ndarray) -> np.ndarray:
            ...
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union, overload

from .errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

BatchDim = Union[int, "tuple[int, int]"]

#: Read by the resource strategy from the class before any instance exists.
_CLASS_ONLY = frozenset({"SUPPORTED_RESOURCES", "SUPPORTS_CPU_MULTI_THREADING"})


@dataclass(frozen=True)
class MethodSignature:
    """How a runner calls one Runnable method.

    `batch_dim` is the dimension along which concurrent calls are joined
    (`input_dim`) and the result split back (`output_dim`). A batchable method
    is given calls of zero items (a tensor whose `input_dim` is 0) only when
    `accepts_empty` is set; otherwise such a call is refused as InvalidInput
    (HTTP 400) before it reaches the method.
    """

    name: str
    batchable: bool = False
    input_dim: int = 0
    output_dim: int = 0
    #: optional IO descriptors describing the method's argument and result (documentation only;
    #: BentoML's ``input_spec``/``output_spec``). Not compared: two signatures differing only here are equal.
    input_spec: Any = field(default=None, compare=False)
    output_spec: Any = field(default=None, compare=False)
    accepts_empty: bool = False
    #: a generator method (sync or async): its items stream back one by one (``async_stream``)
    stream: bool = False

    @classmethod
    def make(cls, name: str, batchable: bool = False, batch_dim: BatchDim = 0,
             input_spec: Any = None, output_spec: Any = None, accepts_empty: bool = False,
             stream: bool = False) -> "MethodSignature":
        if stream and batchable:
            raise ConfigError(f"method {name!r} is a generator (it streams its items) and cannot be batchable; "
                              "drop batchable=True")
        if isinstance(batch_dim, tuple):
            if len(batch_dim) != 2 or not all(isinstance(d, int) for d in batch_dim):
                raise ConfigError(f"batch_dim of method {name!r} must be an int or (input_dim, output_dim), got {batch_dim!r}")
            input_dim, output_dim = batch_dim
        elif isinstance(batch_dim, int) and not isinstance(batch_dim, bool):
            input_dim = output_dim = batch_dim
        else:
            raise ConfigError(f"batch_dim of method {name!r} must be an int or (input_dim, output_dim), got {batch_dim!r}")
        return cls(name=name, batchable=bool(batchable), input_dim=input_dim, output_dim=output_dim,
                   input_spec=input_spec, output_spec=output_spec, accepts_empty=bool(accepts_empty),
                   stream=bool(stream))

    def empty_call_error(self, shapes: list[tuple[int, ...]]) -> str:
        """Why a call of 0 items along the batch dim is refused (the same words served and in process)."""
        return (f"method {self.name!r} got a call of 0 items along batch dim {self.input_dim} (shapes {shapes}); "
                "send at least one item, or declare @Runnable.method(..., accepts_empty=True) to receive "
                "empty calls")


def is_generator(func: Any) -> bool:
    """A generator or async generator function: its runner method streams."""
    return inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)


class _MethodDecl:
    """Marks a function in a Runnable class body as a runner method."""

    def __init__(self, func: Callable[..., Any], batchable: bool, batch_dim: BatchDim,
                 input_spec: Any = None, output_spec: Any = None, accepts_empty: bool = False) -> None:
        self.func = func
        self.accepts_empty = accepts_empty
        self.batchable = batchable
        self.batch_dim = batch_dim
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return self.func.__get__(instance, owner)


class Runnable:
    """Base class for model code hosted by runner workers.

    Subclasses set `SUPPORTED_RESOURCES` (any of ``"cpu"``, ``"nvidia.com/gpu"``)
    and `SUPPORTS_CPU_MULTI_THREADING`; these decide how many worker processes a
    runner starts and how many threads each may use. Methods are exposed with
    `@Runnable.method(...)`.
    """

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = False
    methods: ClassVar[dict[str, MethodSignature]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        methods = dict(getattr(cls, "methods", {}))
        for attr, value in list(vars(cls).items()):
            if isinstance(value, _MethodDecl):
                methods[attr] = MethodSignature.make(attr, value.batchable, value.batch_dim,
                                                     value.input_spec, value.output_spec, value.accepts_empty,
                                                     stream=is_generator(value.func))
                setattr(cls, attr, value.func)
        cls.methods = methods
        resources = cls.SUPPORTED_RESOURCES
        if isinstance(resources, str) or not all(r in ("cpu", "nvidia.com/gpu") for r in resources):
            raise ConfigError(
                f"{cls.__name__}.SUPPORTED_RESOURCES must be a tuple of 'cpu' and/or 'nvidia.com/gpu', got {resources!r}"
            )

    @classmethod
    def prepare_call(cls, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Rewrite a call's arguments in the caller's process, before they cross to a worker.

        The default keeps them. A Runnable overrides it to turn arguments the runner cannot
        join into tensors it can: the transformers adapter packs a list of strings into byte
        arrays, so that concurrent calls of a batchable text pipeline join one batch, and
        unpacks them in its method. Called only for Runnables that override it.
        """
        return args, kwargs

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CLASS_ONLY:
            raise ConfigError(
                f"{type(self).__name__}.{name} is a class attribute: set it in the class body "
                f"(`class {type(self).__name__}(Runnable): {name} = ...`), not on the instance in __init__; "
                "the worker count is decided from it before any instance exists"
            )
        object.__setattr__(self, name, value)

    @overload
    @staticmethod
    def method(func: F) -> F: ...

    @overload
    @staticmethod
    def method(*, batchable: bool = False, batch_dim: BatchDim = 0, input_spec: Any = None,
               output_spec: Any = None, accepts_empty: bool = False) -> Callable[[F], F]: ...

    @staticmethod
    def method(func: Any = None, *, batchable: bool = False, batch_dim: BatchDim = 0, input_spec: Any = None,
               output_spec: Any = None, accepts_empty: bool = False) -> Any:
        """Expose a method to runners. `batchable=True` lets concurrent calls be
        joined along `batch_dim` (an int, or ``(input_dim, output_dim)``).

        `input_spec` / `output_spec` (IO descriptors such as ``NumpyNdarray()``)
        document the method's argument and result; they are kept on the method's
        signature (``Runnable.methods[name].input_spec``) and not enforced.
        A method named ``__call__`` is the runner's default: ``runner.run(x)``.
        `accepts_empty=True` declares that a batchable method handles a call of
        zero items (it then gets it alone, never joined); without it such calls
        are refused with InvalidInput.
        """

        def wrap(f: Callable[..., Any]) -> Any:
            MethodSignature.make(f.__name__, batchable, batch_dim)  # validate early
            return _MethodDecl(f, batchable, batch_dim, input_spec, output_spec, accepts_empty)

        if func is not None:
            return wrap(func)
        return wrap

    @classmethod
    def add_method(
        cls, func: Callable[..., Any], name: str, *, batchable: bool = False, batch_dim: BatchDim = 0,
        accepts_empty: bool = False,
    ) -> None:
        """Add a method after class creation (used by the framework adapters)."""
        setattr(cls, name, func)
        methods = dict(cls.methods)
        methods[name] = MethodSignature.make(name, batchable, batch_dim, accepts_empty=accepts_empty)
        cls.methods = methods
