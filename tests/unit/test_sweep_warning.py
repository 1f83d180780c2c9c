"""A sweep that removes leftovers of dead processes says so, with the counts; hooks that fail are logged."""
from __future__ import annotations

import logging
import os
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
    try:
        with caplog.at_level(logging.WARNING, logger="shmserve"):
            removed = registry.sweep()
    finally:
        seg.close()
        sem.close()
    assert len(removed) == 3
    (record,) = [r for r in caplog.records if "died without cleaning up" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"removed what 1 processes that died without cleaning up left in {private_runtime_dir} and /dev/shm: "
        "2 shared-memory names, 1 registry records (1 half-written), 1 metrics folders, 2 lease files (1 half-made)")


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
