"""shmserve.yaml: layers and their precedence, validation messages, runner overrides, flags, `config show`."""
from __future__ import annotations

import argparse
import textwrap

import pytest
import yaml

import shmserve
from shmserve.cli import build_parser, main
from shmserve.config import Config, load, parse_options, read_file
from shmserve.config.flags import flags_layer
from shmserve.config.layers import Layer, split_key
from shmserve.errors import ConfigError
from shmserve.runner import DEFAULT_ARENA_MB, DEFAULT_TIMEOUT_S
from tests.runnables import EchoRunnable


def write(tmp_path, text: str, name: str = "shmserve.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "svc:svc", *argv])


def test_defaults_without_any_layer():
    config = load(environ={})
    assert config.settings.api_server.workers == 1
    assert config.settings.api_server.http.port == 3000
    assert config.source(("api_server", "workers")) == "default"


def test_precedence_default_file_env_flag(tmp_path):
    path = write(tmp_path, """
        api_server:
          workers: 2
          threads: 8
          http: {port: 4000, host: 0.0.0.0}
    """)
    env = {"SHMSERVE_CONFIG": path, "SHMSERVE_CONFIG_OPTIONS": "api_server.workers=3 api_server.http.port=5000"}
    flags = flags_layer(serve_args("--port", "6000"))
    config = load(None, flags, env)
    api = config.settings.api_server
    assert (api.workers, api.threads, api.http.port, api.http.host, api.startup_timeout) == (3, 8, 6000, "0.0.0.0", 60.0)
    assert config.source(("api_server", "threads")) == f"file {path}"
    assert config.source(("api_server", "workers")) == "env SHMSERVE_CONFIG_OPTIONS"
    assert config.source(("api_server", "http", "port")) == "flag --port"
    assert config.source(("api_server", "startup_timeout")) == "default"


def test_config_argument_beats_environment_variable(tmp_path):
    a = write(tmp_path, "api_server: {workers: 2}\n", "a.yaml")
    b = write(tmp_path, "api_server: {workers: 5}\n", "b.yaml")
    assert load(b, environ={"SHMSERVE_CONFIG": a}).settings.api_server.workers == 5
    assert load(None, environ={"SHMSERVE_CONFIG": a}).settings.api_server.workers == 2


def test_flag_defaults_come_from_the_schema():
    args = serve_args()
    assert flags_layer(args).values == {}  # nothing given: no flag layer values, the schema's defaults stand
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    assert "config api_server.workers; default 1" in help_text
    args = serve_args("--api-workers", "4", "--log-level", "DEBUG", "--max-body-size", "2")
    assert flags_layer(args).values == {"api_server": {"workers": 4, "logging": {"level": "DEBUG"},
                                                       "http": {"max_body_size": 2.0}}}


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, "api_server:\n  wokers: 2\n")
    with pytest.raises(ConfigError) as err:
        read_file(path)
    msg = str(err.value)
    assert "api_server.wokers" in msg and path in msg
    assert "did you mean api_server.workers?" in msg and "Allowed here:" in msg


def test_wrong_type_and_impossible_value_name_key_value_and_rule():
    with pytest.raises(ConfigError) as err:
        parse_options("api_server.workers=0")
    assert "api_server.workers = 0" in str(err.value) and "greater than or equal to 1" in str(err.value)
    assert "env SHMSERVE_CONFIG_OPTIONS" in str(err.value)
    with pytest.raises(ConfigError, match=r"api_server.http.port = 'eighty'.*valid integer"):
        parse_options("api_server.http.port=eighty")
    with pytest.raises(ConfigError, match=r"runners.mlp.max_queue_size = 5000.*less than or equal to 1024"):
        parse_options("runners.mlp.max_queue_size=5000")
    with pytest.raises(ConfigError, match=r"api_server.logging.level = 'LOUD'.*'DEBUG'"):
        parse_options("api_server.logging.level=LOUD")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_options("api_server.workers")


def test_typo_under_runners_is_not_taken_for_a_runner_name():
    with pytest.raises(ConfigError, match=r"runners.batchng .*did you mean runners.batching\?"):
        parse_options("runners.batchng.enabled=false")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_file(write(tmp_path, "api_server: [\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_file(write(tmp_path, "- 1\n"))
    with pytest.raises(ConfigError, match=r"version = 2"):
        read_file(write(tmp_path, "version: 2\n"))
    assert read_file(write(tmp_path, "")).values == {}


def test_resource_names_with_dots_and_quoted_segments():
    assert split_key("runners.mlp.resources.nvidia.com/gpu") == ["runners", "mlp", "resources", "nvidia.com/gpu"]
    assert split_key('runners."my.runner".timeout') == ["runners", "my.runner", "timeout"]
    layer = parse_options("runners.mlp.resources.nvidia.com/gpu=[0,1] runners.resources.cpu=500m")
    assert layer.values == {"runners": {"mlp": {"resources": {"nvidia.com/gpu": [0, 1]}}, "resources": {"cpu": "500m"}}}
    with pytest.raises(ConfigError, match="runners.resources.cpu"):
        parse_options("runners.resources.cpu=lots")


def runner(**kwargs) -> shmserve.Runner:
    return shmserve.Runner(EchoRunnable, name=kwargs.pop("name", "mlp"), **kwargs)


def test_runner_precedence_code_file_env(tmp_path):
    r = runner(max_batch_size=8, arena_mb=4, max_latency_ms=2.0)
    path = write(tmp_path, """
        runners:
          batching: {max_batch_size: 16, max_latency_ms: 7}
          mlp:
            batching: {max_batch_size: 32}
    """)
    config = load(path, environ={"SHMSERVE_CONFIG_OPTIONS": "runners.timeout=2.5"})
    resolved = config.runner(r)
    s = resolved.settings
    assert (s.batching.max_batch_size, s.batching.max_latency_ms, s.arena_mb, s.timeout, s.max_queue_size) == \
        (32, 7.0, 4, 2.5, 1024)
    assert resolved.sources[("batching", "max_batch_size")] == f"file {path}"
    assert resolved.sources[("batching", "max_latency_ms")] == f"file {path} (all runners)"
    assert resolved.sources[("arena_mb",)] == "code"
    assert resolved.sources[("timeout",)] == "env SHMSERVE_CONFIG_OPTIONS (all runners)"
    assert resolved.sources[("max_queue_size",)] == "default"
    # A higher layer wins even when it sets all runners and the lower one this runner.
    env = load(path, environ={"SHMSERVE_CONFIG_OPTIONS": "runners.batching.max_batch_size=2"})
    assert env.runner(r).settings.batching.max_batch_size == 2


def test_apply_changes_the_runner_objects():
    r = runner(max_batch_size=8, method_configs={"predict": {"max_batch_size": 4}}, arena_mb=4, workers=2)
    other = runner(name="other", max_batch_size=8)
    config = Config().with_layer(parse_options(
        "runners.mlp.batching.max_batch_size=32 runners.mlp.max_latency_ms=1 runners.mlp.arena_mb=16 "
        "runners.mlp.timeout=3 runners.mlp.max_queue_size=7 runners.mlp.resources.cpu=3".replace(
            "runners.mlp.max_latency_ms", "runners.mlp.batching.max_latency_ms")))
    config.apply([r, other])
    assert (r.max_batch_size, r.max_latency_ms, r.arena_mb, r.timeout, r.max_queue_size, r.workers) == \
        (32, 1.0, 16, 3.0, 7, 3)
    assert r.predict.config.max_batch_size == 32  # the file outranks the code's method_configs
    assert r.method_configs["predict"].max_latency_ms == 1.0
    assert (other.max_batch_size, other.arena_mb, other.timeout, other.workers) == (8, DEFAULT_ARENA_MB, DEFAULT_TIMEOUT_S, None)


def test_slow_call_threshold_reaches_the_runner_and_is_off_by_default():
    r, other = runner(), runner(name="other")
    Config().with_layer(parse_options("runners.mlp.logging.slow_call_ms=250")).apply([r, other])
    assert r.slow_call_ms == 250.0 and other.slow_call_ms is None
    with pytest.raises(Exception, match="slow_call_ms"):
        Config().with_layer(parse_options("runners.logging.slow_call_ms=-1")).apply([runner()])


def test_batching_disabled_runs_each_call_alone():
    r = runner(max_batch_size=8)
    Config().with_layer(parse_options("runners.batching.enabled=false")).apply([r])
    assert all(c.max_batch_size == 1 and c.max_latency_ms == 0 for c in r.method_configs.values())


def test_workers_from_resources_and_workers_per_resource():
    class Threaded(EchoRunnable):
        SUPPORTS_CPU_MULTI_THREADING = True

    plain, threaded = runner(), shmserve.Runner(Threaded, name="threaded")
    Config().with_layer(parse_options("runners.resources.cpu=1500m runners.workers_per_resource=2")).apply(
        [plain, threaded])
    assert plain.workers == 4  # ceil(1.5 CPUs) x 2
    assert threaded.workers == 2  # one multi-threaded process per resource unit
    with pytest.raises(ConfigError, match=r"nvidia.com/gpu.*does not declare"):
        Config().with_layer(parse_options("runners.mlp.resources.nvidia.com/gpu=1")).apply([runner()])


def test_gpu_ids_become_runner_gpus():
    class Gpu(EchoRunnable):
        SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")

    r = shmserve.Runner(Gpu, name="gpu")
    Config().with_layer(parse_options("runners.gpu.resources.nvidia.com/gpu=[0,1]")).apply([r])
    assert (r.gpus, r.workers) == (["0", "1"], 2)


def test_unknown_runner_section_names_the_runners():
    config = Config().with_layer(parse_options("runners.mpl.timeout=1"))
    with pytest.raises(ConfigError, match=r"no runner named 'mpl'; did you mean runners.mlp\?.*Runners: mlp"):
        config.apply([runner()])
    with pytest.raises(ConfigError, match=r"no runner named 'MLP'; did you mean runners.mlp\?"):
        Config().with_layer(parse_options("runners.MLP.timeout=1")).apply([runner()])


def test_configure_refuses_a_bound_runner():
    r = runner()
    r.init_local()
    try:
        with pytest.raises(ConfigError, match="already bound"):
            r.configure(arena_mb=4)
    finally:
        r._unbind()


def test_runner_timeout_is_the_default_call_timeout():
    calls = []

    class Backend:
        def call(self, method, args, kwargs, timeout):
            calls.append(timeout)

        def close(self):
            pass

    r = runner(timeout=1.5)
    r._bind(Backend())
    r.predict.run(1)
    r.predict.run(1, timeout=0.25)
    assert calls == [1.5, 0.25]


SERVICE = '''
import shmserve
from tests.runnables import EchoRunnable

mlp = shmserve.Runner(EchoRunnable, name="mlp", arena_mb=8)
svc = shmserve.Service("cfgshow", runners=[mlp])
'''


def test_config_show_prints_values_and_sources(tmp_path, monkeypatch, capsys):
    (tmp_path / "cfgshow_service.py").write_text(SERVICE)
    path = write(tmp_path, "api_server: {workers: 2}\nrunners: {mlp: {batching: {max_batch_size: 5}}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHMSERVE_CONFIG_OPTIONS", "api_server.http.port=9000")
    monkeypatch.delenv("SHMSERVE_CONFIG", raising=False)
    assert main(["config", "show", "cfgshow_service:svc", "--config", path]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines() if not line.startswith("#")}
    assert "# /dev/shm needed: " in out
    assert rows["api_server.workers"] == ["2", f"file {path}"]
    assert rows["api_server.http.port"] == ["9000", "env SHMSERVE_CONFIG_OPTIONS"]
    assert rows["runners.mlp.batching.max_batch_size"] == ["5", f"file {path}"]
    assert rows["runners.mlp.arena_mb"] == ["8", "code"]
    assert rows["api_server.threads"] == ["4", "default"]
    # --yaml is a complete file that loads back to the same values.
    assert main(["config", "show", "cfgshow_service:svc", "--config", path, "--yaml"]) == 0
    text = capsys.readouterr().out
    again = write(tmp_path, text, "effective.yaml")
    monkeypatch.delenv("SHMSERVE_CONFIG_OPTIONS")
    assert main(["config", "show", "cfgshow_service:svc", "--config", again, "--yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(text)
    bad = write(tmp_path, "runners: {mpl: {timeout: 1}}\n", "bad.yaml")
    assert main(["config", "show", "cfgshow_service:svc", "--config", bad]) == 2
    assert "did you mean runners.mlp?" in capsys.readouterr().err


def test_layer_labels():
    assert Layer("file", "/x/shmserve.yaml").label == "file /x/shmserve.yaml"


def test_readme_lists_every_key():
    from pathlib import Path

    from shmserve.config.table import markdown_table, readme_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme_table(readme) == markdown_table(), "README key table is stale: run python -m shmserve.config.table"


def test_readme_example_file_is_valid(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Configuration file"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    config = load(write(tmp_path, example), environ={})
    assert config.settings.api_server.workers == 2
    config.check_runners([runner()])


def test_watchdog_limits_come_from_the_file_or_the_code():
    r = runner(watchdog={"restart_after_s": 20})
    config = Config().with_layer(parse_options("runners.mlp.watchdog.not_ready_after_s=2"))
    resolved = config.runner(r)
    assert resolved.sources[("watchdog", "restart_after_s")] == "code"
    config.apply([r])
    assert (r.watchdog.not_ready_after_s, r.watchdog.restart_after_s) == (2.0, 20.0)
    with pytest.raises(ConfigError, match="must exceed"):
        Config().with_layer(parse_options("runners.mlp.watchdog.restart_after_s=1")).apply([runner()])


def test_effective_yaml_loads_back_to_the_same_runner(tmp_path):
    r = runner(workers=2, max_batch_size=8)
    config = Config().with_layer(parse_options("runners.arena_mb=4"))
    again = load(write(tmp_path, config.to_yaml([r])), environ={})
    fresh = runner(workers=2, max_batch_size=8)
    again.apply([fresh])
    assert (fresh.workers, fresh.max_batch_size, fresh.arena_mb, fresh.gpus) == (2, 8, 4, None)
