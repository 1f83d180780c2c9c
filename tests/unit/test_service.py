"""Service and @svc.api: registration rules and loading a service by 'module:attr'."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shmserve
from shmserve.errors import ConfigError
from shmserve.io import JSON, NumpyNdarray, Text
from shmserve.service import Service, load_service


class Echo(shmserve.Runnable):
    @shmserve.Runnable.method(batchable=True)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x


def test_api_registration_defaults_and_options() -> None:
    svc = Service("svc")

    @svc.api(input=JSON(), output=JSON())
    async def info(body: object) -> object:
        """Say hello.

        More text."""
        return body

    @svc.api(input=Text(), output=Text(), name="shout", route="/v1/shout", timeout=2)
    def loud(text: str) -> str:
        return text.upper()

    assert loud("a") == "A"  # the function is returned unchanged
    a, b = svc.apis["info"], svc.apis["shout"]
    assert (a.route, a.is_async, a.doc.splitlines()[0], a.timeout) == ("/info", True, "Say hello.", None)
    assert (b.route, b.is_async, b.timeout, b.route_bytes) == ("/v1/shout", False, 2.0, b"/v1/shout")


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "m", "route": "/metrics"}, "reserved"),
    ({"name": "m", "route": "no-slash"}, "must start with '/'"),
    ({"name": "bad name"}, "invalid API name"),
    ({"timeout": -1}, "positive"),
])
def test_bad_api_options_are_config_errors(kwargs: dict, needle: str) -> None:
    svc = Service("svc")
    with pytest.raises(ConfigError, match=needle):
        svc.api(input=JSON(), output=JSON(), **kwargs)(lambda x: x)


def test_duplicate_names_and_routes_are_refused() -> None:
    svc = Service("svc")
    svc.api(input=JSON(), output=JSON(), name="a")(lambda x: x)
    with pytest.raises(ConfigError, match="already has an API named 'a'"):
        svc.api(input=JSON(), output=JSON(), name="a", route="/other")(lambda x: x)
    with pytest.raises(ConfigError, match="both use route '/a'"):
        svc.api(input=JSON(), output=JSON(), name="b", route="/a")(lambda x: x)


def test_descriptors_must_be_io_descriptors() -> None:
    with pytest.raises(ConfigError, match="IO descriptors"):
        Service("svc").api(input=dict, output=JSON())  # type: ignore[arg-type]


def test_runners_must_have_distinct_names_but_may_share_a_runnable() -> None:
    a = shmserve.Runner(Echo, name="a")
    b = shmserve.Runner(Echo, name="b")
    assert [r.name for r in Service("svc", runners=[a, b]).runners] == ["a", "b"]
    with pytest.raises(ConfigError, match="two runners named 'a'"):
        Service("svc", runners=[a, shmserve.Runner(Echo, name="a")])
    with pytest.raises(ConfigError, match="Runner objects"):
        Service("svc", runners=["a"])  # type: ignore[list-item]


def test_service_name_is_validated() -> None:
    with pytest.raises(ConfigError, match="invalid service name"):
        Service("has space")


def test_service_is_exported_lazily_from_the_package() -> None:
    assert shmserve.Service is Service
    assert shmserve.io.NumpyNdarray is NumpyNdarray


def test_load_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_svc_mod.py").write_text(textwrap.dedent("""
        import shmserve
        svc = shmserve.Service("loaded")
        other = shmserve.Service("other")
        not_a_service = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_service("my_svc_mod:svc").name == "loaded"
        assert load_service("my_svc_mod").name == "loaded"  # attr defaults to svc
        assert load_service("my_svc_mod:other").name == "other"
        with pytest.raises(ConfigError, match="not a shmserve.Service"):
            load_service("my_svc_mod:not_a_service")
        with pytest.raises(ConfigError, match="has no attribute 'nope'"):
            load_service("my_svc_mod:nope")
        with pytest.raises(ConfigError, match="cannot import service module"):
            load_service("no_such_module_xyz:svc")
    finally:
        sys.modules.pop("my_svc_mod", None)
