"""The effective configuration: layers combined, runner overrides resolved, values traced to their source."""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError
from .flags import flag_for
from .layers import Layer, env_layers, leaves, lookup, merge, validate
from .schema import RunnerSettings, ShmserveConfig

__all__ = ["Config", "ResolvedRunner", "load"]

# Runner settings that the code can also give as Runner(...) arguments: schema path -> argument.
_CODE_KEYS: dict[tuple[str, ...], str] = {
    ("batching", "max_batch_size"): "max_batch_size",
    ("batching", "max_latency_ms"): "max_latency_ms",
    ("timeout",): "timeout",
    ("arena_mb",): "arena_mb",
    ("max_queue_size",): "max_queue_size",
    ("logging", "slow_call_ms"): "slow_call_ms",
}
_RUNNER_DEFAULTS = RunnerSettings().model_dump(by_alias=True)
_SETTING_NAMES = frozenset(_RUNNER_DEFAULTS)


@dataclass(frozen=True)
class ResolvedRunner:
    """One runner's effective settings and where each came from (``"default"``, ``"code"``, a layer)."""

    name: str
    settings: RunnerSettings
    sources: Mapping[tuple[str, ...], str]

    def from_config(self, *paths: tuple[str, ...]) -> bool:
        """True when any of `paths` was set by the file, the environment or a flag."""
        return any(self.sources[p] not in ("default", "code") for p in paths)


@dataclass(frozen=True)
class Config:
    """The validated configuration of one deployment and the layers it was built from.

    `settings` is the merged file, environment and flags (defaults filled in); runner
    sections are resolved against a Service's runners with `runner()`.
    """

    settings: ShmserveConfig = field(default_factory=ShmserveConfig)
    layers: tuple[Layer, ...] = ()

    def source(self, path: Sequence[str]) -> str:
        """Where the value at `path` (e.g. ``("api_server", "workers")``) came from."""
        for layer in reversed(self.layers):
            if lookup(layer.values, tuple(path))[0]:
                return f"flag {flag_for(tuple(path))}" if layer.kind == "flag" else layer.label
        return "default"

    def with_layer(self, layer: Layer) -> Config:
        """This configuration with `layer` on top."""
        layers = self.layers + (layer,)
        merged: dict[str, Any] = {}
        for lay in layers:
            merged = merge(merged, lay.values)
        return Config(validate(merged, "combined configuration"), layers)

    def check_runners(self, runners: Iterable[Any]) -> None:
        """Fail when a ``runners.NAME`` section names no runner of the service (a typo, most likely)."""
        names = [r.name for r in runners]
        for name in names:
            if name in _SETTING_NAMES:
                raise ConfigError(f"runner name {name!r} is also a runners setting; rename the Runner")
        for layer in self.layers:
            section = layer.values.get("runners") or {}
            for key in section:
                if key not in _SETTING_NAMES and key not in names:
                    near = [key.lower()] if key.lower() in names else \
                        difflib.get_close_matches(key, names + sorted(_SETTING_NAMES), n=1, cutoff=0.6)
                    hint = f"; did you mean runners.{near[0]}?" if near else ""
                    raise ConfigError(f"runners.{key} ({layer.label}): the service has no runner named {key!r}{hint} "
                                      f"Runners: {', '.join(names) or '(none)'}")

    def runner(self, runner: Any) -> ResolvedRunner:
        """Resolve `runner`'s settings: flags > environment > file > code > default.

        Within one layer a ``runners.NAME`` value beats a ``runners`` (all runners) value.
        """
        values: dict[str, Any] = {}
        sources: dict[tuple[str, ...], str] = {}
        for path, default in leaves(_RUNNER_DEFAULTS):
            value, source = self._runner_value(runner, path, default)
            node = values
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = value
            sources[path] = source
        return ResolvedRunner(runner.name, RunnerSettings.model_validate(values), sources)

    def _runner_value(self, runner: Any, path: tuple[str, ...], default: Any) -> tuple[Any, str]:
        for layer in reversed(self.layers):
            section = layer.values.get("runners") or {}
            found, value = lookup(section.get(runner.name) or {}, path)
            if found:
                return value, layer.label
            found, value = lookup(section, path)
            if found:
                return value, f"{layer.label} (all runners)"
        arg = _CODE_KEYS.get(path)
        code = getattr(runner, "code_settings", {})
        if arg is not None and arg in code and code[arg] != default:
            return code[arg], "code"
        if path[0] == "watchdog" and code.get("watchdog", {}).get(path[-1], default) != default:
            return code["watchdog"][path[-1]], "code"  # Runner(watchdog={...}) gives the section as one dict
        return default, "default"

    def apply(self, runners: Iterable[Any], on_this_host: bool = True) -> None:
        """Give each Runner the settings the file, environment or flags set for it (before it starts).

        With `on_this_host` false (rendering a deployment for another machine) a GPU count is
        not checked against the GPUs visible here: ids ``0..n-1`` stand for the target's.
        """
        runners = list(runners)
        self.check_runners(runners)
        for runner in runners:
            runner.configure(**runner_arguments(self.runner(runner), runner, on_this_host))

    def to_yaml(self, runners: Iterable[Any] = ()) -> str:
        """The effective configuration as a ``shmserve.yaml`` (every key, each runner resolved)."""
        data = self.settings.model_dump(by_alias=True, exclude={"runners"})
        data["runners"] = {r.name: self.runner(r).settings.model_dump(by_alias=True) for r in runners}
        return yaml.safe_dump(data, sort_keys=False)

    def describe(self, runners: Iterable[Any] = ()) -> list[tuple[str, Any, str]]:
        """(key, value, source) of every effective value, the runners resolved, for ``config show``."""
        rows = []
        for path, value in leaves(self.settings.model_dump(by_alias=True, exclude={"runners"})):
            rows.append((".".join(path), value, self.source(path)))
        for r in runners:
            resolved = self.runner(r)
            for path, value in leaves(resolved.settings.model_dump(by_alias=True)):
                rows.append((".".join(("runners", r.name) + path), value, resolved.sources[path]))
        return rows


def runner_arguments(resolved: ResolvedRunner, runner: Any, on_this_host: bool = True) -> dict[str, Any]:
    """The `Runner.configure` arguments for what the configuration (not the code) sets."""
    s = resolved.settings
    args: dict[str, Any] = {}
    for path, arg in _CODE_KEYS.items():
        if resolved.from_config(path):
            node: Any = s
            for p in path:
                node = getattr(node, p)
            args[arg] = node
    if resolved.from_config(*[("watchdog", k) for k in type(s.watchdog).model_fields]):
        args["watchdog"] = s.watchdog.model_dump()
    if not s.batching.enabled:  # every call runs alone: a call larger than the batch size forms a batch by itself
        args["max_batch_size"], args["max_latency_ms"] = 1, 0.0
    # Resources decide the workers only when given: a file that spells out the defaults (null
    # resources, one worker per resource; the effective config `to_yaml` writes) keeps the code's count.
    given = s.resources.cpu is not None or s.resources.nvidia_gpu is not None or s.workers_per_resource != 1
    if given and resolved.from_config(("resources", "cpu"), ("resources", "nvidia.com/gpu"), ("workers_per_resource",)):
        args["workers"], args["gpus"] = plan_resources(s, runner, on_this_host)
    return args


def plan_resources(s: RunnerSettings, runner: Any, on_this_host: bool = True) -> tuple[int, list[str] | None]:
    """Worker count and GPU ids from ``resources`` and ``workers_per_resource`` (BentoML's rules).

    GPUs: ``workers_per_resource`` workers per GPU. CPUs: a multi-threaded Runnable gets
    ``workers_per_resource`` workers, any other one ``ceil(cpu) x workers_per_resource``.
    Without resources the count of visible CPUs or GPUs is the resource.
    """
    from ..strategy import cpu_count, visible_gpus

    cls = runner.runnable_class
    wpr = s.workers_per_resource
    gpu = s.resources.nvidia_gpu
    if gpu is not None and "nvidia.com/gpu" not in cls.SUPPORTED_RESOURCES:
        raise ConfigError(f"runners.{runner.name}.resources.nvidia.com/gpu = {gpu!r}: {cls.__name__} does not declare "
                          "'nvidia.com/gpu' in SUPPORTED_RESOURCES; remove the GPU resource")
    if isinstance(gpu, list):
        gpus: list[str] | None = [str(g) for g in gpu]
    elif isinstance(gpu, int) and gpu > 0 and not on_this_host:
        gpus = [str(i) for i in range(gpu)]  # a container sees its own GPUs numbered from 0
    elif isinstance(gpu, int) and gpu > 0:
        visible = visible_gpus()
        if len(visible) < gpu:
            raise ConfigError(f"runners.{runner.name}.resources.nvidia.com/gpu = {gpu}: only {len(visible)} GPUs are "
                              f"visible ({visible}); lower it or expose more GPUs")
        gpus = visible[:gpu]
    elif gpu is None and s.resources.cpu is None and "nvidia.com/gpu" in cls.SUPPORTED_RESOURCES and visible_gpus():
        gpus = visible_gpus()
    else:
        gpus = None
    if gpus:
        return max(1, math.ceil(len(gpus) * wpr)), gpus
    cpus = cpu_value(s.resources.cpu) if s.resources.cpu is not None else float(cpu_count())
    if cls.SUPPORTS_CPU_MULTI_THREADING:
        return max(1, math.ceil(wpr)), None
    return max(1, math.ceil(math.ceil(cpus) * wpr)), None


def cpu_value(cpu: float | int | str) -> float:
    """CPUs as a number: ``2``, ``0.5`` or ``"500m"``."""
    if isinstance(cpu, str):
        text = cpu.strip()
        try:
            return float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)
        except ValueError:
            raise ConfigError(f"resources.cpu = {cpu!r}: give a number of CPUs or millicores such as '500m'") from None
    return float(cpu)


def load(config_path: str | None = None, flags: Layer | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration from a file (`config_path` or ``SHMSERVE_CONFIG``), the
    ``SHMSERVE_CONFIG_OPTIONS`` environment variable and command-line `flags`, in that order."""
    config = Config()
    for layer in env_layers(environ, config_path):
        config = config.with_layer(layer)
    if flags is not None and flags.values:
        config = config.with_layer(flags)
    return config
