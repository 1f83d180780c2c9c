"""``runners.logging.slow_call_ms``: the runner worker logs a call at least that long, naming its request."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_http_serve import Server, call, wait_until

pytestmark = pytest.mark.integration


def slow_lines(server: Server) -> list[str]:
    return [line for line in server.log().splitlines() if "runner worker: slow call" in line]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("slowcalls")
    (workdir / "slow.yaml").write_text("runners:\n  logging: {slow_call_ms: 0}\n")  # every call is slow enough
    srv = Server(workdir, "--config", str(workdir / "slow.yaml"), api_workers=1)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()


def test_a_call_over_the_threshold_is_logged_with_its_timings_and_request_id(server: Server) -> None:
    status, _, _ = call(server, "POST", "/predict", b"[[1, 2, 3]]",
                        {"Content-Type": "application/json", "X-Request-ID": "slow-1"})
    assert status == 200
    wait_until(lambda: any(line.endswith("request_id=slow-1") for line in slow_lines(server)), 10,
               "the runner worker's slow-call line")
    [line] = [line for line in slow_lines(server) if line.endswith("request_id=slow-1")]
    assert re.search(r"slow call \d+ of method 'predict': [\d.]+ ms \(queue wait [\d.]+ ms, model [\d.]+ ms, "
                     r"batch of 1\) request_id=slow-1$", line), line


def test_without_the_setting_no_call_is_logged_as_slow(tmp_path: Path) -> None:
    srv = Server(tmp_path, api_workers=1)
    try:
        status, _, _ = call(srv, "POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json"})
        assert status == 200
    finally:
        assert srv.stop() == 0, srv.log()
    assert slow_lines(srv) == [] and "runner worker" not in srv.log()
