"""The store under real processes: a save killed midway, and concurrent saves of one name."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import shmserve
from shmserve.models import picklable
from shmserve.models.store import ModelNotFound

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _spawn(code: str, home: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SHMSERVE_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"child did not reach {path.name} within {timeout}s")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr:
        proc.stderr.close()


# The child stops at the crash point, announces it with a marker file, and hangs until killed.
_WRITER_CRASH = """
    import time, pathlib
    import shmserve
    MARK = pathlib.Path({mark!r})

    class Huge:
        def __call__(self, x):
            return x
        def __reduce__(self):
            MARK.touch()            # model.pkl is open and partly written
            time.sleep(600)

    shmserve.picklable.save_model("victim", Huge())
"""

_PUBLISH_CRASH = """
    import time, pathlib
    import shmserve
    from shmserve.models import store
    MARK = pathlib.Path({mark!r})

    def stuck(path):
        MARK.touch()                # files written, manifest written, name lock held
        time.sleep(600)

    store._fsync_tree = stuck
    shmserve.picklable.save_model("victim", len)
"""


@pytest.mark.parametrize("script", [_WRITER_CRASH, _PUBLISH_CRASH], ids=["in-writer", "in-publish-holding-lock"])
def test_killed_save_leaves_no_half_model(home: Path, tmp_path: Path, script: str) -> None:
    before = picklable.save_model("victim", abs)  # an older version must stay the latest
    mark = tmp_path / "mark"
    proc = _spawn(script.format(mark=str(mark)), home)
    try:
        _wait_for(mark, proc)
        leftovers = [p for p in (home / "models" / ".tmp").iterdir()]
        assert leftovers, "the child should be mid-save with a staging directory"
    finally:
        _kill(proc)

    assert [str(m) for m in shmserve.models.list()] == [str(before)]
    assert str(shmserve.models.get("victim")) == str(before)
    assert sorted(os.listdir(home / "models" / "victim")) == [before.version]

    # The dead child's flock is gone (no deadlock) and its staging directory is swept.
    after = picklable.save_model("victim", abs)
    assert str(shmserve.models.get("victim")) == str(after)
    assert list((home / "models" / ".tmp").iterdir()) == []


_SAVER = """
    import pathlib, time
    import shmserve
    GO = pathlib.Path({go!r})
    while not GO.exists():
        time.sleep(0.001)
    for i in range({n}):
        shmserve.picklable.save_model("shared", [{worker}, i], signatures={{"__len__": {{}}}})
"""


def test_concurrent_saves_of_one_name(home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers, per_worker = 4, 5
    procs = [_spawn(_SAVER.format(go=str(go), n=per_worker, worker=w), home) for w in range(workers)]
    try:
        go.touch()
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read().decode() if p.stderr else ""
    finally:
        for p in procs:
            _kill(p)

    models = shmserve.models.list("shared")
    assert len(models) == workers * per_worker
    assert len({m.version for m in models}) == workers * per_worker
    payloads = sorted(tuple(picklable.load_model(m)) for m in models)
    assert payloads == sorted((w, i) for w in range(workers) for i in range(per_worker))
    for m in models:
        m.verify()
    assert str(shmserve.models.get("shared")) == str(models[-1])
    # each worker's own saves got increasing versions
    for w in range(workers):
        mine = [m.version for m in models if picklable.load_model(m)[0] == w]
        assert [picklable.load_model(f"shared:{v}")[1] for v in mine] == list(range(per_worker))
    assert list((home / "models" / ".tmp").iterdir()) == []
    with pytest.raises(ModelNotFound):
        shmserve.models.get("shared:19990101-000000-000000-0000")


def test_torch_module_defined_in_main_loads_elsewhere(home: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("cloudpickle")
    out = tmp_path / "expected.pt"
    proc = _spawn(
        f"""
        import torch, shmserve

        class Doubler(torch.nn.Module):          # lives in __main__: no other process can import it
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)
            def forward(self, x):
                return 2 * self.lin(x)

        torch.manual_seed(0)
        m = Doubler()
        stored = shmserve.pytorch.save_model("main_made", m)
        assert stored.options["serializer"] == "cloudpickle", stored.options
        with torch.no_grad():
            torch.save(m(torch.ones(4, 3)), {str(out)!r})
        """,
        home,
    )
    try:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        _kill(proc)
    loaded = shmserve.pytorch.load_model("main_made")
    assert type(loaded).__name__ == "Doubler"
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.ones(4, 3)), torch.load(out, weights_only=True))
