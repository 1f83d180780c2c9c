"""The pieces both supervisors share (`shmserve.process`): restart policy, status pipe, signal
scheme, stop sequence; and `ServeConfig`, whose fields give ``shmserve serve`` its arguments."""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import signal
from typing import Any

import pytest

from shmserve.config import Config
from shmserve.config.serve import ServeConfig, add_serve_arguments
from shmserve.http import serve as serve_mod
from shmserve.process import (
    API_WORKER,
    RUNNER_WORKER,
    RUNNER_WORKER_OUTLIVING,
    SERVE,
    Child,
    CrashHistory,
    RestartPolicy,
    SignalFlag,
    report_error,
    report_ready,
    stop_children,
)
from shmserve.worker import group

# -- restart policy -----------------------------------------------------------------------------------

def test_runner_workers_restart_at_once_then_back_off_after_three_crashes_in_ten_seconds() -> None:
    history = CrashHistory(group.RESTART_POLICY)
    delays = [history.crashed(float(t)).delay_s for t in range(7)]
    assert delays == [0.0, 0.0, 0.0, 0.2, 0.4, 0.8, 1.6]
    assert all(history.crashed(7.0 + t).restart for t in range(20))  # runner workers are never given up on
    assert history.crashed(100.0).delay_s == 0.0  # the window forgot the old crashes


def test_backoff_is_capped() -> None:
    history = CrashHistory(RestartPolicy(window_s=60.0, backoff_after=3, backoff_max_s=5.0))
    assert max(history.crashed(t * 0.01).delay_s for t in range(30)) == 5.0


def test_api_workers_give_up_after_five_crashes_in_thirty_seconds() -> None:
    history = CrashHistory(serve_mod.RESTART_POLICY)
    decisions = [history.crashed(t * 5.0) for t in range(6)]
    assert [d.restart for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].crashes == 6 and all(d.delay_s == 0.0 for d in decisions)
    spaced = CrashHistory(serve_mod.RESTART_POLICY)
    assert all(spaced.crashed(t * 31.0).restart for t in range(10))  # one crash a window never gives up


# -- status pipe --------------------------------------------------------------------------------------

def test_status_messages_are_json_and_say_ready_or_why_not() -> None:
    recv, send = mp.Pipe(duplex=False)
    child = Child(process=None, status=recv)
    assert child.poll() is None and not child.ready
    report_error(send, "ValueError: no model")
    failed = child.poll(1.0)
    assert failed is not None and not failed.ready and failed.error == "ValueError: no model"
    assert failed.pid == os.getpid() and not child.ready
    report_ready(send)
    ok = child.poll(1.0)
    assert ok is not None and ok.ready and ok.pid == os.getpid() and child.ready
    send.send_bytes(b'{"ready": true}')
    raw = recv.recv_bytes()  # JSON on the wire: nothing a child writes is unpickled
    assert raw.startswith(b"{")
    send.close()
    with pytest.raises(EOFError):
        child.poll(1.0)
    assert child.poll_quietly() is None
    recv.close()


# -- signal scheme ------------------------------------------------------------------------------------

def test_each_role_is_stopped_by_its_first_stop_signal() -> None:
    assert SERVE.stop_signal is signal.SIGTERM and API_WORKER.stop_signal is signal.SIGTERM
    assert RUNNER_WORKER.stop_signal is signal.SIGTERM and signal.SIGINT in RUNNER_WORKER.ignore
    # runner workers under `shmserve serve` outlive a process-group SIGTERM so API workers drain first
    assert RUNNER_WORKER_OUTLIVING.stop_signal is signal.SIGUSR1
    assert {signal.SIGINT, signal.SIGTERM} <= set(RUNNER_WORKER_OUTLIVING.ignore)
    assert group.OUTLIVE_STOP_SIGNAL is RUNNER_WORKER_OUTLIVING.stop_signal


def test_signal_flag_records_the_signal_ignores_the_rest_and_restores() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    seen: list[signal.Signals] = []
    flag = SignalFlag(RUNNER_WORKER_OUTLIVING, wakeup=True, on_signal=seen.append)
    try:
        signal.raise_signal(signal.SIGTERM)  # ignored by this role: must not stop it (nor this test)
        assert not flag.stop
        signal.raise_signal(signal.SIGUSR1)
        assert flag.stop and flag.received is signal.SIGUSR1 and seen == [signal.SIGUSR1]
        assert flag.read_end is not None and flag.read_end.recv(16)  # the wait on read_end ends at once
        flag.drain()
    finally:
        flag.restore()
    assert {s: signal.getsignal(s) for s in before} == before


# -- stop sequence ------------------------------------------------------------------------------------

class FakeProcess:
    """A process that exits on the signal it obeys, and ignores the others."""

    def __init__(self, pid: int, obeys: int | None) -> None:
        self.pid, self.obeys, self.alive = pid, obeys, True
        self.events: list[str] = []

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        self.events.append("join")

    def kill(self) -> None:
        self.events.append("kill")
        self.alive = False


def test_stop_children_signals_everyone_first_then_kills_only_those_left(monkeypatch: pytest.MonkeyPatch) -> None:
    procs = [FakeProcess(101, signal.SIGUSR1), FakeProcess(102, None)]
    sent: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        for p in procs:
            if p.pid == pid and p.obeys == sig:
                p.alive = False

    monkeypatch.setattr(os, "kill", fake_kill)
    killed: list[Child] = []
    children = [Child(p, status=None) for p in procs]  # type: ignore[arg-type]
    stop_children(children, signal.SIGUSR1, 0.0, on_kill=killed.append)
    assert sent == [(101, signal.SIGUSR1), (102, signal.SIGUSR1)]  # every child hears the signal before any wait
    assert procs[0].events == ["join"] and procs[1].events == ["join", "kill", "join"]
    assert killed == [children[1]]


# -- ServeConfig --------------------------------------------------------------------------------------

def test_serve_arguments_come_from_serve_config_fields_with_their_defaults(tmp_path: Any) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["app:svc"])
    defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    assert args.local_runners is defaults["local_runners"] is False
    config = Config()
    opts = ServeConfig.from_args(args, config)
    assert (opts.service, opts.local_runners, opts.config, opts.cwd) == ("app:svc", False, config, os.getcwd())
    assert ServeConfig.from_args(parser.parse_args(["app:svc", "--local-runners"]), config).local_runners
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.service = "other:svc"  # type: ignore[misc]


def test_shmserve_serve_parser_takes_the_serve_config_arguments() -> None:
    from shmserve.cli import build_parser

    args = build_parser().parse_args(["serve", "m:svc", "--local-runners", "--port", "0"])
    assert args.service == "m:svc" and args.local_runners is True
