"""The models a Service offers over the Open Inference Protocol, and the one way to call them.

- Every API whose input descriptor is a `NumpyNdarray` is a model named after
  the API (``predict``): one input, named after the API function's parameter,
  decoded with the descriptor's dtype and shape rules, then the API function
  runs exactly as for a native ``POST /predict``.
- Every method of every runner is a model named ``<runner>.<method>``
  (``mlp.predict``): its required positional parameters are the input tensors,
  in order; tensors naming optional parameters and the request's ``parameters``
  become keyword arguments.

Both call the runner through the API worker's own runner client, so v2 calls
and native calls of one runner method join the same batches.

Results become outputs: an array (or anything numpy turns into one) is
``output``; a tuple or list is ``output_0``, ``output_1``, ...; a dict of
arrays gives its keys. Nothing in a request is ever unpickled.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io import NumpyNdarray
from ..runner import Runner
from ..service import API, Service
from .datatypes import to_datatype
from .errors import InferError

__all__ = ["TensorMeta", "Model", "ApiModel", "RunnerModel", "ModelTable", "RESERVED_PARAMETERS", "outputs_of"]

#: request parameters the protocol and its clients use themselves; never passed to a model
RESERVED_PARAMETERS = frozenset({
    "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", "binary_data_output",
})
VERSION = "1"


@dataclass(frozen=True)
class TensorMeta:
    """An input or output in model metadata; `datatype` is ``""`` where the model declares none."""

    name: str
    datatype: str = ""
    shape: tuple[int, ...] = (-1,)

    def as_dict(self) -> dict[str, Any]:
        """The metadata's JSON form."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Model:
    """One model: metadata, readiness and `infer`. Subclasses set the fields and `_call`."""

    name: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    max_batch_size: int = 0
    result_in_place = False  # whether a runner worker may write the one output straight into a region
    platform = "shmserve"
    version = VERSION

    def __init__(self) -> None:
        self.input_names = frozenset(t.name for t in self.inputs)

    def metadata(self) -> dict[str, Any]:
        """The model metadata response (REST form)."""
        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": [t.as_dict() for t in self.inputs], "outputs": [t.as_dict() for t in self.outputs]}

    def ready(self) -> bool:
        """True when the model can serve now (may block briefly: call it off the event loop)."""
        raise NotImplementedError

    def check_version(self, version: str) -> None:
        """`InferError` 404 unless `version` is empty or this model's version."""
        if version and version != self.version:
            raise InferError(404, f"model {self.name!r} has no version {version!r}; it has version {self.version!r}")

    async def infer(self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any], timeout: float | None,
                    executor: Executor | None) -> list[tuple[str, np.ndarray]]:
        """Call the model with named input arrays; the outputs as ``(name, array)`` pairs.

        Raises `InferError` with the status to answer (400 for bad inputs, 500 when
        the model raised, 503 overloaded, 504 past `timeout`).
        """
        unknown = set(inputs) - self.input_names
        if unknown:
            raise InferError(400, f"model {self.name!r} has no input named {sorted(unknown)[0]!r}; "
                                  f"its inputs are {sorted(self.input_names)}")
        kwargs = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS and not k.startswith("triton_")}
        result = await self._call(inputs, kwargs, timeout, executor)
        return outputs_of(result)

    async def _call(self, inputs: dict[str, np.ndarray], kwargs: dict[str, Any], timeout: float | None,
                    executor: Executor | None) -> Any:
        raise NotImplementedError


def outputs_of(result: Any) -> list[tuple[str, np.ndarray]]:
    """Name a model's result as outputs (see the module docstring)."""
    if type(result) is np.ndarray:  # the common case, without the checks below
        to_datatype(result.dtype, "output")
        return [("output", result)]
    if isinstance(result, dict):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, (tuple, list)) and result and not isinstance(result[0], (int, float, bool)):
        items = [(f"output_{i}", v) for i, v in enumerate(result)]
    else:
        items = [("output", result)]
    out = []
    for name, value in items:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InferError(500, f"output {name!r}: the model returned a {type(value).__name__} that is not an array ({exc})") from None
        to_datatype(arr.dtype, name)  # refuse object/string results here, with the output's name
        out.append((name, arr))
    return out


def _parameter_names(func: Callable[..., Any], skip_self: bool) -> tuple[list[str], set[str], bool]:
    """(required positional names, optional names, takes **kwargs) of `func`."""
    params = list(inspect.signature(func).parameters.values())
    if skip_self and params:
        params = params[1:]
    required, optional, var_kw = [], set(), False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            required.append(p.name)
        else:
            optional.add(p.name)
    return required, optional, var_kw


class ApiModel(Model):
    """A Service API with a `NumpyNdarray` input, called as ``POST /<api>`` would call it."""

    def __init__(self, api: API, ready: Callable[[], bool]) -> None:
        assert isinstance(api.input, NumpyNdarray)
        self.api = api
        self.name = api.name
        self.descriptor: NumpyNdarray = api.input
        required, _, _ = _parameter_names(api.func, skip_self=False)
        dtype = self.descriptor.dtype
        self.inputs = (TensorMeta(required[0] if required else "input",
                                  to_datatype(dtype, "input") if dtype is not None else "",
                                  self.descriptor.shape or (-1,)),)
        out = api.output
        out_dtype = getattr(out, "dtype", None)
        self.outputs = (TensorMeta("output", to_datatype(out_dtype, "output") if out_dtype is not None else "",
                                   getattr(out, "shape", None) or (-1,)),)
        self._ready = ready
        super().__init__()

    def ready(self) -> bool:
        """Ready when every runner of the service has a live worker (the APIs may call any of them)."""
        return self._ready()

    async def _call(self, inputs: dict[str, np.ndarray], kwargs: dict[str, Any], timeout: float | None,
                    executor: Executor | None) -> Any:
        name = self.inputs[0].name
        if name not in inputs:
            raise InferError(400, f"model {self.name!r} needs its input {name!r}")
        if kwargs:
            raise InferError(400, f"model {self.name!r} is an API and takes no parameters; "
                                  f"got {sorted(kwargs)}")
        try:
            value = self.descriptor.from_array(inputs[name])
        except Exception as exc:
            raise InferError(400, f"input {name!r}: {exc}") from None
        api = self.api
        limits = [t for t in (timeout, api.timeout) if t is not None]
        limit = min(limits) if limits else None
        if api.is_async:
            coro = api.func(value)
        else:
            coro = asyncio.get_running_loop().run_in_executor(executor, api.func, value)
        return await (coro if limit is None else asyncio.wait_for(coro, limit))


class RunnerModel(Model):
    """One runner method, ``<runner>.<method>``."""

    result_in_place = True  # its one output is the method's result: the worker may write it into a region

    def __init__(self, runner: Runner, method: str, runner_ready: Callable[[Runner], bool]) -> None:
        self.runner = runner
        self.method_name = method
        self.name = f"{runner.name}.{method}"
        config = runner.method_configs[method]
        func = getattr(runner.runnable_class, method)
        self.required, self.optional, self.var_kw = _parameter_names(func, skip_self=True)
        self.inputs = tuple(TensorMeta(n) for n in (self.required or ["input"]))
        self.outputs = (TensorMeta("output"),)
        self.max_batch_size = config.max_batch_size if config.signature.batchable else 0
        self._method = getattr(runner, method)
        self._runner_ready = runner_ready
        super().__init__()
        self.input_names = frozenset(t.name for t in self.inputs) | (self.optional if not self.var_kw else frozenset())
        self._open = self.var_kw
        self._required_names = frozenset(self.required) if self.required else None  # None: never the fast path

    def ready(self) -> bool:
        """Ready when the runner has a live worker."""
        return self._runner_ready(self.runner)

    async def infer(self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any], timeout: float | None,
                    executor: Executor | None) -> list[tuple[str, np.ndarray]]:
        """See `Model.infer`; a method taking ``**kwargs`` accepts any extra input."""
        if not parameters and inputs.keys() == self._required_names:
            # Exactly the required inputs and no parameters (most requests): nothing to check or sort out.
            args = [inputs[n] for n in self.required]
            return outputs_of(await self._method.async_run(*args, timeout=timeout))
        if self._open:
            kwargs = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS and not k.startswith("triton_")}
            return outputs_of(await self._call(inputs, kwargs, timeout, executor))
        return await super().infer(inputs, parameters, timeout, executor)

    async def _call(self, inputs: dict[str, np.ndarray], kwargs: dict[str, Any], timeout: float | None,
                    executor: Executor | None) -> Any:
        names = self.required or ["input"]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InferError(400, f"model {self.name!r} needs the inputs {names}; missing {missing}")
        args = [inputs[n] for n in names] if self.required else [inputs["input"]]
        for k, v in inputs.items():
            if k not in names:
                kwargs[k] = v
        if not self.var_kw:
            unknown = set(kwargs) - self.optional
            if unknown:
                raise InferError(400, f"model {self.name!r} takes no parameter {sorted(unknown)[0]!r}; "
                                      f"its optional parameters are {sorted(self.optional)}")
        return await self._method.async_run(*args, timeout=timeout, **kwargs)


class ModelTable:
    """Every model of one Service, by name."""

    def __init__(self, service: Service, service_ready: Callable[[], bool],
                 runner_ready: Callable[[Runner], bool]) -> None:
        self.models: dict[str, Model] = {}
        for api in service.apis.values():
            if isinstance(api.input, NumpyNdarray):
                self.models[api.name] = ApiModel(api, service_ready)
        for runner in service.runners:
            for method in runner.method_configs:
                model = RunnerModel(runner, method, runner_ready)
                if model.name in self.models:
                    raise ValueError(f"v2 model name {model.name!r} is taken by an API and a runner method; rename one")
                self.models[model.name] = model

    def get(self, name: str, version: str = "") -> Model:
        """The model `name`; `InferError` 404 when there is none (or not that version)."""
        model = self.models.get(name)
        if model is None:
            raise InferError(404, f"no model named {name!r}; the models are {sorted(self.models)} "
                                  "(POST /v2/repository/index lists them)")
        model.check_version(version)
        return model

    def index(self, ready: Callable[[Model], bool]) -> list[dict[str, str]]:
        """The model repository index: every model with its state."""
        return [{"name": m.name, "version": m.version, "state": "READY" if ready(m) else "UNAVAILABLE", "reason": ""}
                for m in self.models.values()]
