"""Fuzzing a live server: schemathesis against its /docs.json, and a short soak (perf/soak.py).

The long soak is ``python -m perf.soak --seconds 600`` (see the README).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from tests.integration.test_http_serve import Server

schemathesis = pytest.importorskip("schemathesis")  # in the test extra

pytestmark = pytest.mark.integration


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory):
    # The example service: its APIs are robust code, so any 500 is the server's own.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", f"{EXAMPLES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        srv = Server(tmp_path_factory.mktemp("fuzz"), api_workers=1, source="from service_mlp import svc  # noqa: F401\n")
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def test_no_request_generated_from_docs_json_gets_a_server_error(docs_server: Server) -> None:
    # The schemathesis pytest plugin does not load under this pytest: drive its strategies with hypothesis.
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{docs_server.port}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=6, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        check()


def test_a_short_soak_stays_flat() -> None:
    from perf import soak

    args = argparse.Namespace(seconds=4.5, clients=4, seed=1, rss_slack_mb=32.0,
                              tree=Path(__file__).resolve().parents[2])
    result = soak.run(args)
    assert not result["problems"], result
