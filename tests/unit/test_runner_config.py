import numpy as np
import pytest

import shmserve
from shmserve.errors import ConfigError, RunnerNotStarted
from shmserve.strategy import Strategy, plan_workers
from tests.runnables import EchoRunnable


def test_method_signatures_are_collected():
    m = EchoRunnable.methods
    assert m["predict"].batchable and m["predict"].input_dim == 0
    assert m["predict_dim1"].input_dim == 1 and m["predict_dim1"].output_dim == 1
    assert not m["describe"].batchable


def test_batch_dim_tuple():
    class R(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True, batch_dim=(0, 1))
        def f(self, x):
            return x

    assert (R.methods["f"].input_dim, R.methods["f"].output_dim) == (0, 1)


def test_bad_batch_dim_is_a_clear_error():
    with pytest.raises(ConfigError, match="batch_dim"):

        class R(shmserve.Runnable):
            @shmserve.Runnable.method(batchable=True, batch_dim="0")
            def f(self, x):
                return x


def test_method_configs_override_and_validate():
    r = shmserve.Runner(EchoRunnable, name="cfg", max_batch_size=8, method_configs={"predict": {"max_batch_size": 4}})
    assert r.predict.config.max_batch_size == 4
    assert r.describe.config.max_batch_size == 8
    with pytest.raises(ConfigError, match="unknown methods"):
        shmserve.Runner(EchoRunnable, name="cfg", method_configs={"nope": {}})
    with pytest.raises(ConfigError, match="unknown keys"):
        shmserve.Runner(EchoRunnable, name="cfg", method_configs={"predict": {"batch": 1}})
    with pytest.raises(ConfigError, match="max_batch_size"):
        shmserve.Runner(EchoRunnable, name="cfg", max_batch_size=0)


def test_invalid_names_are_refused():
    for bad in ("", "a/b", "x" * 80, "-lead"):
        with pytest.raises(ConfigError, match="invalid runner name"):
            shmserve.Runner(EchoRunnable, name=bad)


def test_not_started_error_says_what_to_do():
    r = shmserve.Runner(EchoRunnable, name="idle")
    with pytest.raises(RunnerNotStarted, match="shmserve.start"):
        r.predict.run(np.ones(1))


def test_init_local_runs_in_process():
    r = shmserve.Runner(EchoRunnable, name="local", runnable_init_params={"scale": 3.0})
    r.init_local()
    np.testing.assert_array_equal(r.predict.run(np.ones((2, 2))), np.full((2, 2), 3.0))
    assert r.describe.run(np.ones(3), tag="t")["tag"] == "t"


def test_strategy_cpu_single_threaded_gets_one_worker_per_cpu():
    plans = plan_workers(EchoRunnable, cpus=4)
    assert len(plans) == 4 and all(p.threads == 1 for p in plans)
    assert plans[0].env["OMP_NUM_THREADS"] == "1" and plans[0].env["CUDA_VISIBLE_DEVICES"] == ""


def test_strategy_multithreaded_gets_one_worker_with_all_threads():
    class MT(shmserve.Runnable):
        SUPPORTS_CPU_MULTI_THREADING = True

        @shmserve.Runnable.method
        def f(self, x):
            return x

    plans = plan_workers(MT, cpus=8)
    assert len(plans) == 1 and plans[0].threads == 8
    assert len(plan_workers(MT, workers=2, cpus=8)) == 2


def test_strategy_gpu_one_worker_per_gpu():
    class G(shmserve.Runnable):
        SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")

        @shmserve.Runnable.method
        def f(self, x):
            return x

    plans = plan_workers(G, gpus=["0", "1"], cpus=8)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1"]
    with pytest.raises(ConfigError):
        plan_workers(EchoRunnable, gpus=["0"])


def test_gpu_only_runnable_without_gpu_is_refused_when_strict(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    class G(shmserve.Runnable):
        SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

        @shmserve.Runnable.method
        def f(self, x):
            return x

    with pytest.raises(ConfigError, match="no visible GPU"):
        plan_workers(G, strategy=Strategy(strict=True))
