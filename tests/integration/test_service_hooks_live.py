"""Startup/shutdown hooks and the request Context under a live `shmserve serve`."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_bentoml_guide import served
from tests.integration.test_http_serve import alive, descendants, wait_until

pytestmark = pytest.mark.integration

GOOD = textwrap.dedent('''
    import os
    import shmserve
    from shmserve.io import JSON

    svc = shmserve.Service("hooks")

    @svc.on_startup
    async def load(ctx):
        ctx.state["answer"] = 41

    @svc.on_startup
    def bump(ctx):
        ctx.state["answer"] += 1

    @svc.on_shutdown
    def bye(ctx):
        with open(os.environ["HOOKS_OUT"], "a") as f:
            f.write(f"bye {ctx.state['answer']}\\n")

    @svc.api(input=JSON(), output=JSON())
    def answer(body, ctx: shmserve.Context):
        ctx.response.headers["x-answer"] = str(ctx.state["answer"])
        ctx.response.status_code = 202
        return {"answer": ctx.state["answer"], "user": ctx.request.headers.get("X-User")}
''')

BAD = textwrap.dedent('''
    import shmserve

    svc = shmserve.Service("bad_hooks")

    @svc.on_startup
    def load():
        raise RuntimeError("cannot load the vocabulary")
''')


def test_hooks_run_once_per_api_worker_and_share_state(tmp_path: Path, shm_clean, monkeypatch) -> None:
    (tmp_path / "hooks_ok.py").write_text(GOOD)
    out = tmp_path / "out.txt"
    monkeypatch.setenv("HOOKS_OUT", str(out))
    with served(tmp_path, "hooks_ok") as srv:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/answer", b"{}", {"X-User": "ann", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("x-answer"), resp.read()) == (202, "42", b'{"answer":42,"user":"ann"}')
        conn.close()
    assert out.read_text() == "bye 42\n"  # one API worker: the shutdown hook ran once


def test_failing_startup_hook_fails_the_start_with_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "hooks_bad.py").write_text(BAD)
    proc = subprocess.Popen([sys.executable, "-m", "shmserve.cli", "serve", "hooks_bad:svc", "--port", "0"],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    family: set[int] = set()
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        family |= descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_until(lambda: not any(alive(p) for p in family), 10, "server processes to exit")
    assert proc.returncode == 1, err
    assert "RuntimeError: cannot load the vocabulary" in err and "Traceback" in err and "hooks_bad.py" in err
