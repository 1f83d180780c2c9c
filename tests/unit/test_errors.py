"""The error catalogue: one table wire status <-> exception <-> HTTP status, and what is generated from it."""
from __future__ import annotations

import inspect

import orjson
import pytest

from shmserve import errors
from shmserve.errors import CATALOGUE, RunnerError, ShmserveError, from_wire
from shmserve.http.openapi import build_openapi
from shmserve.io import NumpyNdarray
from shmserve.link import remote_error
from shmserve.service import Service
from shmserve.shm.wire import Status

WIRE_FAILURES = {s.name: s.value for s in Status if s not in (Status.OK, Status.ITEM)}  # ITEM: a streamed item


def _exception_classes() -> list[type[ShmserveError]]:
    return [obj for obj in vars(errors).values()
            if inspect.isclass(obj) and issubclass(obj, ShmserveError) and obj.__module__ == errors.__name__]


def test_every_wire_status_has_one_exception_and_an_http_status() -> None:
    assert WIRE_FAILURES, "the wire declares no failure statuses"
    by_wire = {e.wire_status: e for e in CATALOGUE if e.wire_status}
    assert set(by_wire) == set(WIRE_FAILURES)
    for name, entry in by_wire.items():
        assert issubclass(entry.exception, ShmserveError) and 400 <= entry.http_status < 600, name


def test_every_exception_is_catalogued_once_and_carries_its_http_status() -> None:
    rows = [e.exception for e in CATALOGUE]
    assert len(rows) == len(set(rows))
    assert set(rows) == set(_exception_classes())
    for entry in CATALOGUE:
        assert entry.exception.http_status == entry.http_status


def test_the_docstring_tree_draws_every_exception_with_its_status() -> None:
    doc = errors.__doc__ or ""
    for entry in CATALOGUE:
        assert f"{entry.exception.__name__} [{entry.http_status}]" in doc
        if entry.wire_status:
            assert f"wire: {entry.wire_status}" in doc


@pytest.mark.parametrize("name", sorted(WIRE_FAILURES))
def test_a_failed_response_becomes_the_catalogued_exception(name: str) -> None:
    entry = next(e for e in CATALOGUE if e.wire_status == name)
    exc = remote_error("r", "m", WIRE_FAILURES[name], orjson.dumps({"type": "X", "message": "why"}))
    assert type(exc) is entry.exception and "why" in str(exc)
    assert type(from_wire(name, "why")) is entry.exception


def test_an_unknown_wire_status_is_a_runner_error() -> None:
    assert type(from_wire("FROM_A_NEWER_WORKER", "x")) is RunnerError
    assert type(remote_error("r", "m", 250, b'{"message": "x"}')) is RunnerError


def test_openapi_lists_every_status_an_api_can_answer_with() -> None:
    svc = Service("s")

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    def predict(x: object) -> object:
        return x

    responses = build_openapi(svc, "1")["paths"]["/predict"]["post"]["responses"]
    for entry in CATALOGUE:
        if entry.api:
            assert entry.exception.__name__ in responses[str(entry.http_status)]["description"]
    for status in errors.HTTP_SERVER_ERRORS:
        assert str(status) in responses
    assert "404" not in responses  # the model store's errors are not an API call's
