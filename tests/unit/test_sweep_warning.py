"""A sweep that removes leftovers of dead processes says so, with the counts; hooks that fail are logged."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from shmserve import lease, registry, traces
from shmserve.models import store
from shmserve.shm.segment import Segment, new_name
from shmserve.shm.signal import Signal


@pytest.fixture
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(path))
    return path


def test_a_sweep_warns_with_what_it_removed(private_runtime_dir: Path, shm_clean: None, dead_lease,
                                            caplog: pytest.LogCaptureFixture) -> None:
    dead = dead_lease()
    seg = Segment.create(4096, name=new_name(dead))
    sem = Signal.create(new_name(dead))
    (private_runtime_dir / f"{registry.METRICS_PREFIX}{dead}").mkdir()
    (private_runtime_dir / f".somerunner.{dead}.tmp").write_bytes(b"{}")
    (lease.lease_dir() / ".half.new").touch(mode=0o600)
    stale_socket(private_runtime_dir / "somerunner-0.sock")
    try:
        with caplog.at_level(logging.WARNING, logger="shmserve"):
            removed = registry.sweep()
    finally:
        seg.close()
        sem.close()
    assert len(removed) == 4 and not (private_runtime_dir / "somerunner-0.sock").exists()
    (record,) = [r for r in caplog.records if "died without cleaning up" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"removed what 1 processes that died without cleaning up left in {private_runtime_dir} and /dev/shm: "
        "2 shared-memory names (0 of no known lease), 1 registry records (1 half-written), 1 metrics folders, "
        "1 worker sockets, "
        "2 lease files (1 half-made)")


def stale_socket(path: Path) -> None:
    """A Unix socket file whose process is gone: bound, then closed without unlinking (as SIGKILL leaves it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_worker_sockets_are_swept_only_when_nobody_listens_and_no_live_runner_names_them(
        private_runtime_dir: Path, dead_lease) -> None:
    rdir = private_runtime_dir
    stale_socket(rdir / "gone-0.sock")  # a killed run's: removed
    stale_socket(rdir / "starting-0.sock")  # named by a live runner's record (its worker binds it soon): kept
    live = lease.Lease.take(lease.lease_dir())  # held by this process (not its own lease: that stays put)
    (rdir / "starting.json").write_bytes(b'{"lease": "%s", "workers": [{"index": 0, "socket": "%s"}]}'
                                         % (live.id.encode(), str(rdir / "starting-0.sock").encode()))
    stale_socket(rdir / "dead-0.sock")  # named by a dead runner's record: removed with the record
    (rdir / "dead.json").write_bytes(b'{"lease": "%s", "workers": [{"socket": "%s"}]}'
                                     % (dead_lease().encode(), str(rdir / "dead-0.sock").encode()))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(rdir / "unknown-0.sock"))  # no record, but a process listens on it: kept
    listener.listen(1)
    stale_socket(rdir / "mine.sock")  # not a worker socket's name: not ours to judge
    (rdir / "plain-0.sock").write_bytes(b"")  # not a socket at all: kept
    try:
        removed = registry.sweep()
    finally:
        listener.close()
        live.release()
    assert sorted(Path(p).name for p in removed if p.endswith(".sock")) == ["dead-0.sock", "gone-0.sock"]
    assert sorted(p.name for p in rdir.glob("*.sock")) == ["mine.sock", "plain-0.sock", "starting-0.sock",
                                                           "unknown-0.sock"]


def test_a_sweep_with_nothing_to_remove_is_quiet(private_runtime_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shmserve"):
        assert registry.sweep() == []
    assert caplog.records == []


def test_leftover_model_saves_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tmp = store.models_dir(tmp_path) / store._TMP
    tmp.mkdir(parents=True)
    (tmp / "999999999-abc").mkdir()  # no such pid
    (tmp / f"{os.getpid()}-def").mkdir()  # this process: kept
    with caplog.at_level(logging.WARNING, logger="shmserve.models"):
        assert store.sweep_temp(tmp_path) == 1
    assert "removed 1 unfinished model saves of processes that died" in caplog.text


def test_a_failing_trace_hook_is_logged_once_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(runner: str, method: str, trace: dict[str, float]) -> None:
        raise ValueError("hook bug")

    def working(runner: str, method: str, trace: dict[str, float]) -> None:
        seen.append(method)

    traces.add_trace_hook(broken)
    traces.add_trace_hook(working)
    try:
        with caplog.at_level(logging.ERROR, logger="shmserve"):
            for _ in range(3):
                traces.deliver("r", "predict", {}, None)
    finally:
        traces.remove_trace_hook(broken)
        traces.remove_trace_hook(working)
    assert seen == ["predict"] * 3
    assert [r.getMessage().split(";")[0] for r in caplog.records if "trace hook" in r.getMessage()] == [
        f"trace hook {broken!r} raised"]


def test_a_sweep_judges_every_lease_in_the_lease_directory_it_swept(
        private_runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime directory setting changing while a sweep runs (another thread of the process setting
    # SHMSERVE_RUNTIME_DIR) must not make a live runner's record, or the socket it names, look dead:
    # every lease is judged in the one lease directory the sweep started with.
    rdir = private_runtime_dir
    stale_socket(rdir / "starting-0.sock")
    live = lease.Lease.take(lease.lease_dir())
    (rdir / "starting.json").write_bytes(b'{"lease": "%s", "workers": [{"index": 0, "socket": "%s"}]}'
                                         % (live.id.encode(), str(rdir / "starting-0.sock").encode()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    scan = lease.dead

    def dead_then_moved(directory: Path | None = None) -> list[str]:
        found = scan(directory)
        monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(elsewhere))
        return found

    monkeypatch.setattr(lease, "dead", dead_then_moved)
    try:
        removed = registry.sweep()
    finally:
        live.release()
    assert removed == [] and (rdir / "starting.json").exists() and (rdir / "starting-0.sock").exists()
