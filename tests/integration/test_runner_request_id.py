"""The runner worker's log line about a failed call names the HTTP request it served (``request_id=``)."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.integration.test_http_serve import Server, call, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("reqid"), api_workers=1)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()


def worker_lines(server: Server, method: str) -> list[str]:
    return [line for line in server.log().splitlines()
            if "runner worker: call" in line and f"method {method!r}" in line]


def test_a_model_error_logged_by_the_runner_worker_names_the_request_id(server: Server) -> None:
    status, headers, _ = call(server, "POST", "/boom", b"{}",
                              {"Content-Type": "application/json", "X-Request-ID": "abc123"})
    assert status == 500 and headers["x-request-id"] == "abc123"
    wait_until(lambda: any("request_id=abc123" in line for line in worker_lines(server, "boom")), 10,
               "the runner worker's line about the failed call")
    [line] = [line for line in worker_lines(server, "boom") if "request_id=abc123" in line]
    assert "failed: ValueError: model exploded" in line


def test_a_request_without_an_id_is_logged_with_the_minted_one(server: Server) -> None:
    # the API worker mints an ID for a request that brings none; the runner worker's line names that one
    status, headers, _ = call(server, "POST", "/boom", b"{}", {"Content-Type": "application/json"})
    assert status == 500
    minted = headers["x-request-id"]
    assert len(minted) <= 24
    wait_until(lambda: any(line.endswith(f"request_id={minted}") for line in worker_lines(server, "boom")), 10,
               "the runner worker's line naming the minted ID")
    assert not [line for line in worker_lines(server, "boom") if re.search(r"request_id=-$", line)]


def test_runner_worker_lines_have_the_api_workers_format(server: Server) -> None:
    # <date> <time> runner[NAME:INDEX] LEVEL logger: message, as api[N] lines are
    call(server, "POST", "/boom", b"{}", {"Content-Type": "application/json", "X-Request-ID": "fmt-1"})
    wait_until(lambda: any("request_id=fmt-1" in line for line in worker_lines(server, "boom")), 10,
               "the runner worker's line about the failed call")
    [line] = [line for line in worker_lines(server, "boom") if "request_id=fmt-1" in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} runner\[double-[0-9a-f]+:0\] WARNING shmserve.worker: "
                    r"runner worker: call \d+ of method 'boom' failed", line), line
    assert re.search(r"^\S+ \S+ api\[0\] \w+ ", server.log(), re.M)  # the API worker's, for comparison
