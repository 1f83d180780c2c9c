"""The BentoML calling surface of Runner/Runnable, in process (no workers)."""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import shmserve
from shmserve.errors import ConfigError
from shmserve.strategy import CPUFallbackWarning, Strategy
from tests.runnables import EchoRunnable


class CallRunnable(shmserve.Runnable):
    @shmserve.Runnable.method(batchable=True)
    def __call__(self, x):
        return x + 1

    @shmserve.Runnable.method
    def other(self, x):
        return x - 1


class OnlyRunnable(shmserve.Runnable):
    @shmserve.Runnable.method(input_spec="in-spec", output_spec="out-spec")
    def classify(self, x):
        return threading.get_ident()


class RunNamed(shmserve.Runnable):
    @shmserve.Runnable.method
    def run(self, x):
        return x * 10


def test_run_calls_dunder_call_or_the_only_method():
    r = shmserve.Runner(CallRunnable)
    r.init_local(quiet=True)
    assert r.run(1) == 2 and r.other.run(1) == 0
    assert asyncio.run(r.async_run(1)) == 2
    only = shmserve.Runner(OnlyRunnable, timeout=None)  # no deadline: a sync local call runs in the calling thread
    only.init_local(quiet=True)
    assert only.run(0) == threading.get_ident()
    bounded = shmserve.Runner(OnlyRunnable)  # the default timeout: on the backend's thread, which can be waited on
    bounded.init_local(quiet=True)
    assert bounded.run(0) != threading.get_ident() and bounded.run(0) == bounded.run(0)


def test_run_without_a_default_says_which_method_to_call():
    r = shmserve.Runner(EchoRunnable, name="echo")
    r.init_local(quiet=True)
    with pytest.raises(ConfigError, match=r"none is __call__.*runner\.<method>\.run"):
        r.run(np.ones(1))


class Preferring(shmserve.Runnable):
    DEFAULT_METHOD = "second"

    @shmserve.Runnable.method
    def __call__(self, x):
        return ("call", x)

    @shmserve.Runnable.method
    def second(self, x):
        return ("second", x)


def test_default_method_class_attribute_comes_before_dunder_call():
    r = shmserve.Runner(Preferring)
    r.init_local(quiet=True)
    assert r.run(1) == ("second", 1) and asyncio.run(r.async_run(2)) == ("second", 2)
    assert r.default_method is r.second


def test_a_default_method_that_is_not_a_method_is_a_clear_error():
    class Wrong(shmserve.Runnable):
        DEFAULT_METHOD = "missing"

        @shmserve.Runnable.method
        def only(self, x):
            return x

    r = shmserve.Runner(Wrong)
    r.init_local(quiet=True)
    with pytest.raises(ConfigError, match=r"DEFAULT_METHOD is 'missing'.*\['only'\]"):
        r.run(1)


def test_a_method_named_run_shadows_runner_run_and_still_works():
    r = shmserve.Runner(RunNamed)
    r.init_local(quiet=True)
    assert r.run(2) == 20 and r.run.run(3) == 30


def test_async_local_call_runs_off_the_event_loop_thread():
    r = shmserve.Runner(OnlyRunnable)
    r.init_local(quiet=True)

    async def main() -> int:
        return await r.classify.async_run(0)

    assert asyncio.run(main()) != threading.get_ident()
    r._unbind()


def test_method_specs_are_kept_on_the_signature():
    sig = OnlyRunnable.methods["classify"]
    assert (sig.input_spec, sig.output_spec) == ("in-spec", "out-spec")
    assert sig == shmserve.runnable.MethodSignature.make("classify")  # specs do not change equality


def test_instance_level_resources_are_an_error_naming_the_class_attribute():
    class Bad(shmserve.Runnable):
        def __init__(self):
            self.SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

        @shmserve.Runnable.method
        def f(self, x):
            return x

    with pytest.raises(ConfigError, match=r"Bad\.SUPPORTED_RESOURCES is a class attribute"):
        shmserve.Runner(Bad).init_local(quiet=True)

    class Bad2(Bad):
        def __init__(self):
            self.SUPPORTS_CPU_MULTI_THREADING = True

    with pytest.raises(ConfigError, match="SUPPORTS_CPU_MULTI_THREADING is a class attribute"):
        shmserve.Runner(Bad2).init_local(quiet=True)


def test_mixed_case_name_is_lowercased_with_a_warning():
    with pytest.warns(UserWarning, match="lower case"):
        r = shmserve.Runner(EchoRunnable, name="My_Runner")
    assert r.name == "my_runner"


def test_runnable_instance_instead_of_class_says_so():
    with pytest.raises(ConfigError, match="not an instance"):
        shmserve.Runner(EchoRunnable())  # type: ignore[arg-type]


def test_init_local_warns_unless_quiet(caplog):
    r = shmserve.Runner(EchoRunnable, name="loud")
    with caplog.at_level(logging.WARNING, logger="shmserve.runner"):
        r.init_local()
    assert "debugging and tests only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shmserve.runner"):
        r.init_local(quiet=True)
    assert caplog.text == ""


class TwoWorkers(Strategy):
    def worker_count(self, runnable_class, gpus, cpus):
        return 2

    def worker_threads(self, runnable_class, count, gpus, cpus):
        return 3


def test_scheduling_strategy_decides_count_and_threads():
    for kw in ({"scheduling_strategy": TwoWorkers}, {"strategy": TwoWorkers()}):
        r = shmserve.Runner(EchoRunnable, name="s", **kw)
        plans = r.strategy.plan(r.runnable_class, cpus=8)
        assert [p.threads for p in plans] == [3, 3]
        assert plans[0].env["OMP_NUM_THREADS"] == "3"
    assert len(r.strategy.plan(r.runnable_class, workers=1, cpus=8)) == 1  # an explicit count still wins
    with pytest.raises(ConfigError, match="not both"):
        shmserve.Runner(EchoRunnable, scheduling_strategy=TwoWorkers, strategy=Strategy)
    with pytest.raises(ConfigError, match="Strategy subclass or instance"):
        shmserve.Runner(EchoRunnable, scheduling_strategy="default")


def test_gpu_only_runnable_without_gpu_warns_and_serves_on_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    class G(shmserve.Runnable):
        SUPPORTED_RESOURCES = ("nvidia.com/gpu",)
        SUPPORTS_CPU_MULTI_THREADING = True

        @shmserve.Runnable.method
        def f(self, x):
            return x

    with pytest.warns(CPUFallbackWarning, match="serving it on the CPU"):
        plans = Strategy().plan(G, cpus=4)
    assert len(plans) == 1 and plans[0].gpu is None and plans[0].threads == 4
    assert plans[0].env["CUDA_VISIBLE_DEVICES"] == ""


def test_embedded_runner_runs_in_the_calling_process():
    r = shmserve.Runner(EchoRunnable, name="emb", embedded=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no init_local warning for an embedded runner
        with shmserve.start(r) as group:
            assert r.pid.run() == os.getpid()
            assert group.runners == [r]
    assert not r.is_bound


def test_models_are_kept_on_runner_and_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    stored = shmserve.picklable.save_model("tok", str.upper, signatures={"__call__": {}})
    r = shmserve.Runner(EchoRunnable, name="m", models=[stored])
    svc = shmserve.Service("svc", runners=[r], models=[stored, "other:v1"])
    assert r.models == [stored] and svc.models[1] == "other:v1"
    with pytest.raises(ConfigError, match="stored models"):
        shmserve.Runner(EchoRunnable, models=[3])
    emb = stored.to_runner(embedded=True)
    assert emb.embedded and emb.models == [stored]
    emb.init_local(quiet=True)
    assert emb.run("abc") == "ABC"
