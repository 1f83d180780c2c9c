"""Method names that clash with the attributes of the objects that hold their handles."""
from __future__ import annotations

from typing import Any

import pytest

import shmserve
from shmserve.client import ConnectedRunner
from shmserve.errors import ConfigError, InvalidInput


class Ready(shmserve.Runnable):
    @shmserve.Runnable.method
    def ready(self, x: Any) -> Any:
        return x


def test_a_method_named_like_a_runner_attribute_is_refused_with_what_to_do() -> None:
    # Runner.ready() is the readiness probe (/readyz calls it): a method handle there would run the model.
    with pytest.raises(ConfigError, match=r"'ready'.*clashes with the Runner attribute 'ready'.*rename the method"):
        shmserve.Runner(Ready, name="clash")


class FakeClient:
    name = "served"
    methods = {"close": {"index": 0}, "client": {"index": 1}, "name": {"index": 2}, "predict": {"index": 3}}

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_connected_methods_named_like_its_attributes_do_not_replace_them() -> None:
    # A served method named `close` replaced ConnectedRunner.close: leaving `with connect(...)`
    # then raised TypeError and never detached (one named `client` broke close() as well).
    client = FakeClient()
    with ConnectedRunner(client) as r:  # type: ignore[arg-type]
        assert r.name == "served" and r.client is client
        assert r.predict is r["predict"]
        assert r["close"].name == "close" and r["client"].name == "client" and r["name"].name == "name"
        with pytest.raises(InvalidInput, match="has no method 'nope'"):
            r["nope"]
    assert client.closed
